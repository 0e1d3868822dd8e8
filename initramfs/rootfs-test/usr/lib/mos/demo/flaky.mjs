// Test-image service that fails on purpose: runs a while, then exits with status 3.
const afterMs = Number(process.env.FLAKY_AFTER_MS ?? 3000);
console.log(`flaky: up, failing in ${afterMs} ms`);
setTimeout(() => {
  console.error('flaky: failing on purpose (exit 3)');
  process.exit(3);
}, afterMs);
