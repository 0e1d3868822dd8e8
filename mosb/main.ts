/**
 * `mosb`: the build side. Keysets (a manifest CA and per-product signing certificates),
 * publishing signed install manifests into OCI layouts, and squashing service images into the
 * squashfs+verity form machines mount. Exit codes: 0 ok, 1 failure, 64 usage.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { MosbError } from './errors.ts';
import { addProduct, createKeyset, MAX_DAYS } from './keyset.ts';
import { describeSource, type OciSource, parseSource } from './manifest-yaml.ts';
import { checkSafeName, checkTag, defaultKeysDir, parseOutSpec } from './names.ts';
import { KEY_ALGORITHMS, type KeyAlgorithm } from './openssl.ts';
import { publishManifest, resolveCreated } from './publish.ts';
import { squashToLayout } from './squash-tools.ts';

export interface CliIo {
  out(text: string): void;
  err(text: string): void;
}

export const ExitCode = {
  Ok: 0,
  Failure: 1,
  /** EX_USAGE */
  Usage: 64,
} as const;

export async function main(argv: string[], io: CliIo = processIo()): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv);
    return ExitCode.Ok;
  } catch (error) {
    // Commander has already printed its own errors (and help) through `io`.
    if (error instanceof CommanderError) return error.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage;
    if (error instanceof MosbError && error.code === 'E_ARGUMENT') {
      io.err(`mosb: ${error.message}\n`);
      return ExitCode.Usage;
    }
    io.err(`mosb: ${error instanceof Error ? error.message : String(error)}\n`);
    return ExitCode.Failure;
  }
}

function processIo(): CliIo {
  return { out: (text) => process.stdout.write(text), err: (text) => process.stderr.write(text) };
}

const keysDirOption = () => new Option('--keys-dir <dir>', 'where keysets live').env('MOS_KEYS_DIR').default(undefined, '~/.local/share/mos/keys');
const algorithmOption = (description = 'key algorithm') => new Option('--algorithm <algorithm>', description).choices(KEY_ALGORITHMS);
const daysOption = () => new Option('--days <n>', 'product certificate lifetime in days (default 7305, 20 years)').argParser(parseDays);

function buildProgram(io: CliIo): Command {
  const program = new Command('mosb')
    .description('build signed install manifests for mos machines')
    .exitOverride()
    .configureOutput({
      writeOut: (text) => io.out(text),
      writeErr: (text) => io.err(text),
      outputError: (text, write) => write(`mosb: ${text.replace(/^error: /, '')}`),
    })
    .showHelpAfterError('(see mosb --help)');
  const print = (text: string) => io.out(`${text}\n`);

  const keyset = program.command('keyset').description('manifest signing keys: a CA per keyset, a certificate per product');
  keyset
    .command('create')
    .description('create a keyset: its manifest CA and, for each --product, a signing certificate')
    .argument('<name>', 'keyset name', parseSafe('keyset'))
    .addOption(new Option('--product <product>', 'add a product (repeatable)').argParser(collectSafe('product')).default([] as string[]))
    .addOption(algorithmOption().default('ecdsa-p256'))
    .addOption(daysOption())
    .addOption(keysDirOption())
    .action(async (name: string, options: { product: string[]; algorithm: KeyAlgorithm; days?: number; keysDir?: string }) => {
      const keysDir = options.keysDir ?? defaultKeysDir();
      const created = await createKeyset({ keysDir, name, algorithm: options.algorithm, products: options.product, validity: { days: options.days } });
      print(`keyset ${created.name} (${created.algorithm}): ${created.paths.dir}`);
      print(`  manifest CA  ${created.paths.caCert}`);
      for (const product of created.products) print(`  product ${product.name}  uuid ${product.uuid}  ${product.paths.cert}`);
    });
  keyset
    .command('add-product')
    .description("add a product's signing certificate to a keyset")
    .argument('<name>', 'keyset name', parseSafe('keyset'))
    .argument('<product>', 'product name', parseSafe('product'))
    .addOption(algorithmOption("key algorithm (default: the CA's)"))
    .addOption(daysOption())
    .addOption(keysDirOption())
    .action(async (name: string, product: string, options: { algorithm?: KeyAlgorithm; days?: number; keysDir?: string }) => {
      const keysDir = options.keysDir ?? defaultKeysDir();
      const created = await addProduct({ keysDir, keyset: name, product, algorithm: options.algorithm, validity: { days: options.days } });
      print(`product ${created.name}  uuid ${created.uuid}  ${created.paths.cert}`);
    });

  const manifest = program.command('manifest').description('signed install manifests');
  manifest
    .command('publish')
    .description('sign manifest.yaml as install.json and write it, its signature, its certificate and its images into an OCI layout')
    .argument('<manifest>', 'manifest.yaml')
    .requiredOption('--keyset <name>', 'keyset to sign with', parseSafe('keyset'))
    .requiredOption('--product <product>', 'product (in the keyset) to sign as', parseSafe('product'))
    .requiredOption('--out <dir[:tag]>', 'output OCI layout, and the tag of the install artifact (default: latest)', parseOut)
    .option('--created <time>', 'RFC 3339 creation time (default: $SOURCE_DATE_EPOCH, else now)')
    .addOption(keysDirOption())
    .action(
      async (
        manifestPath: string,
        options: { keyset: string; product: string; out: { dir: string; tag: string }; created?: string; keysDir?: string },
      ) => {
        const result = await publishManifest({
          manifestPath,
          keysDir: options.keysDir ?? defaultKeysDir(),
          keyset: options.keyset,
          product: options.product,
          outDir: options.out.dir,
          tag: options.out.tag,
          created: resolveCreated(options.created),
        });
        print(`published oci:${result.layoutDir}:${result.tag} (product ${result.productUuid})`);
        print(`  install      ${result.install.digest}`);
        print(`  signature    ${result.signatureArtifact.digest}`);
        print(`  certificate  ${result.certificateArtifact.digest}`);
        for (const image of result.images) print(`  ${image.serviceName}  ${image.digest}${image.kept ? '  (kept: already squashfs+verity)' : `  (squashed from ${image.source})`}`);
      },
    );

  const image = program.command('image').description('service images as machines mount them');
  image
    .command('squash')
    .description('convert an OCI image into one squashfs layer with its dm-verity tree appended (what publish does to each target), for inspection')
    .usage('oci:SRC:TAG --out oci:DIR:TAG')
    .argument('<source>', 'the image: oci:DIR:TAG (a local OCI layout) or oci-archive:FILE:TAG (one packed by skopeo or umoci)', parseOciRef('source'))
    .requiredOption('--out <oci:dir:tag>', 'OCI layout to write the squashed image into, and its tag there', parseOciRef('--out'))
    .action(async (source: OciSource, options: { out: OciSource }) => {
      const result = await squashToLayout({ source, baseDir: process.cwd(), outDir: options.out.dir, tag: options.out.tag });
      print(`${result.kept ? 'kept' : 'squashed'} ${describeSource(source)} → oci:${result.outDir}:${result.tag}`);
      print(`  manifest   ${result.manifest.digest}  (${result.manifest.size} bytes)`);
      print(`  source     ${result.source.digest}`);
      print(`  layer      ${result.layer.digest}  (${result.layer.size} bytes, ${result.layer.mediaType})`);
      print(`  root hash  ${result.rootHash}`);
    });
  return program;
}

/** `oci:DIR:TAG`, as manifest.yaml's `source` takes it. */
function parseOciRef(what: 'source' | '--out') {
  return (value: string): OciSource => {
    const parsed = parseSource(value);
    if (typeof parsed === 'string') throw new InvalidArgumentError(parsed);
    // An output tag of 64 hex digits would pose as a published service image; a source may be one.
    if (what === '--out') {
      if (parsed.archive !== undefined) throw new InvalidArgumentError(`${value}: the output is an OCI layout directory (oci:DIR:TAG), not an archive`);
      try {
        checkTag(parsed.tag);
      } catch (error) {
        throw new InvalidArgumentError((error as Error).message);
      }
    }
    return parsed;
  };
}

function parseSafe(kind: string) {
  return (value: string): string => {
    try {
      return checkSafeName(kind, value);
    } catch (error) {
      throw new InvalidArgumentError((error as Error).message);
    }
  };
}

function collectSafe(kind: string) {
  const parse = parseSafe(kind);
  return (value: string, previous: string[] = []): string[] => [...previous, parse(value)];
}

function parseOut(value: string): { dir: string; tag: string } {
  try {
    return parseOutSpec(value);
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}

function parseDays(value: string): number {
  const days = Number(value);
  if (!/^\d+$/.test(value) || days < 1 || days > MAX_DAYS) throw new InvalidArgumentError(`expected an integer 1..${MAX_DAYS}`);
  return days;
}
