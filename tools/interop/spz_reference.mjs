// Niantic's reference SPZ library (its WebAssembly build, npm @adobe/spz) as a command line, for
// tests/test_interop.py:
//   node spz_reference.mjs decode IN.spz OUT.json [AXES]   the Gaussians in RDF (3DGS PLY) axes, or AXES
//                                                          (LUF: glTF's)
//   node spz_reference.mjs encode IN.json OUT.spz VERSION  write them (same JSON) as SPZ VERSION
// JSON: numPoints, shDegree, positions [N*3], scales [N*3] (log), rotations [N*4] (x y z w),
// alphas [N] (logit), colors [N*3] (SH DC), sh [N*D*3] (coefficient after the DC, channel innermost).
import { readFileSync, writeFileSync } from 'node:fs';
import createSpzModule from '@adobe/spz';

const FIELDS = ['positions', 'scales', 'rotations', 'alphas', 'colors', 'sh'];
const [command, input, output, option] = process.argv.slice(2);
const spz = await createSpzModule();
const RDF = spz.CoordinateSystem.RDF;

if (command === 'decode') {
  const to = option ? spz.CoordinateSystem[option] : RDF;
  const cloud = spz.loadSpzFromBuffer(new Uint8Array(readFileSync(input)), { to });
  if (!cloud || cloud.numPoints === 0) {
    console.error(`${input}: the reference library could not load it`);
    process.exit(1);
  }
  const out = { numPoints: cloud.numPoints, shDegree: cloud.shDegree, antialiased: cloud.antialiased };
  for (const f of FIELDS) out[f] = Array.from(cloud[f]);
  writeFileSync(output, JSON.stringify(out));
} else if (command === 'encode') {
  const json = JSON.parse(readFileSync(input, 'utf8'));
  const cloud = { numPoints: json.numPoints, shDegree: json.shDegree, antialiased: false, extensions: [] };
  for (const f of FIELDS) cloud[f] = new Float32Array(json[f]);
  const options = { version: Number(option), from: RDF, sh1Bits: 5, shRestBits: 4 };
  const bytes = spz.saveSpzToBuffer(cloud, options);
  if (!bytes || bytes.length === 0) {
    console.error('the reference library could not save the cloud');
    process.exit(1);
  }
  writeFileSync(output, bytes);
} else {
  console.error('usage: node spz_reference.mjs decode IN.spz OUT.json | encode IN.json OUT.spz VERSION');
  process.exit(2);
}
