// Validate Kubernetes objects (a JSON array, from the rendered manifests)
// against the Kubernetes OpenAPI schemas bundled by the npm package
// kubernetes-models (ajv-compiled validators). Usage:
//   NODE_PATH=DIR/node_modules node validate.mjs objects.json
// Prints one line per object; exits 1 when any object is invalid or of a
// kind the package does not know.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import path from "node:path";

const [file, modDir] = process.argv.slice(2);
const objs = JSON.parse(readFileSync(file, "utf8"));
let bad = 0;
for (const o of objs) {
  const [group, version] = o.apiVersion.includes("/") ? o.apiVersion.split("/") : ["", o.apiVersion];
  const dir = group ? `${group}/${version}` : version;
  const where = `${o.kind} ${o.metadata?.name}`;
  let Kind;
  try {
    const url = pathToFileURL(path.join(modDir, "kubernetes-models", dir, `${o.kind}.js`)).href;
    Kind = (await import(url))[o.kind];
  } catch (e) {
    console.log(`INVALID ${where}: no schema for ${o.apiVersion} ${o.kind}`);
    bad++;
    continue;
  }
  try {
    new Kind(o).validate();
    console.log(`ok ${o.apiVersion} ${where}`);
  } catch (e) {
    console.log(`INVALID ${where}: ${e.message}`);
    bad++;
  }
}
process.exit(bad ? 1 : 0);
