// Demo longrun without readiness: a line every second.
let n = 0;
setInterval(() => {
  n += 1;
  console.log(`report ${n}: all quiet`);
}, 1000);
process.on('SIGTERM', () => process.exit(0));
