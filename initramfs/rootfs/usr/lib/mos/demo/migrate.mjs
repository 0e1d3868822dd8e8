// Demo oneshot: pretends to migrate a schema.
import { setTimeout as sleep } from 'node:timers/promises';

console.log('migrating schema');
await sleep(300);
console.log('schema at version 7');
