// The Khronos glTF validator and glTF-Transform's reader as a command line, for tests/test_interop.py:
//   node gltf_check.mjs validate IN.glb OUT.json   the validator's report
//   node gltf_check.mjs read IN.glb OUT.json       extensionsUsed, and per primitive its mode, extensions and
//                                                  every attribute's values (flattened) as glTF-Transform reads them
//   node gltf_check.mjs spz IN.glb OUT.spz         the buffer view named by KHR_gaussian_splatting_compression_spz_2
import { readFileSync, writeFileSync } from 'node:fs';
import { NodeIO } from '@gltf-transform/core';
import validator from 'gltf-validator';

const [command, input, output] = process.argv.slice(2);
const bytes = new Uint8Array(readFileSync(input));

if (command === 'validate') {
  const report = await validator.validateBytes(bytes, { uri: input, maxIssues: 1000 });
  writeFileSync(output, JSON.stringify(report, null, 1));
} else if (command === 'read') {
  const doc = await new NodeIO().readBinary(bytes);
  const json = (await new NodeIO().binaryToJSON(bytes)).json;
  const primitives = [];
  for (const mesh of doc.getRoot().listMeshes()) {
    for (const prim of mesh.listPrimitives()) {
      const attributes = {};
      for (const semantic of prim.listSemantics()) {
        const accessor = prim.getAttribute(semantic);
        attributes[semantic] = {
          type: accessor.getType(),
          componentType: accessor.getComponentType(),
          normalized: accessor.getNormalized(),
          count: accessor.getCount(),
          values: Array.from(accessor.getArray()),
        };
      }
      primitives.push({ mode: prim.getMode(), attributes });
    }
  }
  const gltfPrimitives = json.meshes.flatMap((m) => m.primitives);
  primitives.forEach((p, i) => { p.extensions = gltfPrimitives[i].extensions ?? {}; });
  writeFileSync(output, JSON.stringify({ extensionsUsed: json.extensionsUsed ?? [], primitives }));
} else if (command === 'spz') {
  // glTF-Transform's reader refuses a required extension it lacks; its JSON / resource split does not.
  const { json, resources } = await new NodeIO().binaryToJSON(bytes);
  const primitive = json.meshes[0].primitives[0];
  const index = primitive.extensions.KHR_gaussian_splatting.extensions.KHR_gaussian_splatting_compression_spz_2.bufferView;
  const view = json.bufferViews[index];
  const buffer = resources['@glb.bin'];
  writeFileSync(output, buffer.subarray(view.byteOffset ?? 0, (view.byteOffset ?? 0) + view.byteLength));
} else {
  console.error('usage: node gltf_check.mjs validate|read|spz IN.glb OUT');
  process.exit(2);
}
