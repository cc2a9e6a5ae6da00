// 3D Tiles readers we did not write, for tests/test_tiles.py:
//   node tiles_check.mjs read TILESET.json OUT.json   the tileset as loaders.gl's Tiles3DLoader reads it: every
//                                                     tile (depth first) with its geometric error, refine,
//                                                     transform, bounding volume and content (each .glb parsed
//                                                     by Tiles3DLoader: type, glTF extensions, attributes,
//                                                     Gaussians)
//   node tiles_check.mjs enu LAT LON HEIGHT OUT.json  CesiumJS's east-north-up frame at a WGS84 point
//                                                     (Transforms.eastNorthUpToFixedFrame), 16 numbers by column
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parse } from '@loaders.gl/core';
import { Tiles3DLoader } from '@loaders.gl/3d-tiles';

const [command, ...args] = process.argv.slice(2);

if (command === 'read') {
  const [input, output] = args;
  const tileset = await parse(readFileSync(input), Tiles3DLoader, {}, { url: input });
  const tiles = [];
  const visit = async (tile, depth) => {
    const row = {
      depth,
      geometricError: tile.lodMetricValue,
      refine: tile.refine === 2 ? 'REPLACE' : tile.refine === 1 ? 'ADD' : tile.refine,
      transform: tile.transform ?? null,
      boundingVolume: tile.boundingVolume,
      content: null,
    };
    if (tile.contentUrl) {
      const uri = tile.content.uri;
      const content = await parse(readFileSync(join(dirname(input), uri)), Tiles3DLoader, {
        '3d-tiles': { loadGLTF: true },
      });
      const gltf = content.gltf;
      const primitive = gltf.meshes[0].primitives[0];
      row.content = {
        uri,
        type: content.type,
        gltfUpAxis: content.gltfUpAxis,
        extensionsUsed: gltf.extensionsUsed ?? [],
        extensionsRequired: gltf.extensionsRequired ?? [],
        primitiveExtensions: Object.keys(primitive.extensions ?? {}),
        attributes: Object.keys(primitive.attributes),
        count: primitive.attributes.POSITION.count,
        positionMin: primitive.attributes.POSITION.min,
        positionMax: primitive.attributes.POSITION.max,
      };
    }
    tiles.push(row);
    for (const child of tile.children ?? []) await visit(child, depth + 1);
  };
  await visit(tileset.root, 0);
  writeFileSync(
    output,
    JSON.stringify({
      type: tileset.type,
      asset: tileset.asset,
      geometricError: tileset.geometricError,
      extensionsUsed: tileset.extensionsUsed ?? [],
      extensions: tileset.extensions ?? {},
      tiles,
    }),
  );
} else if (command === 'enu') {
  const [lat, lon, height, output] = args;
  const { Cartesian3, Matrix4, Transforms } = await import('@cesium/engine');
  const frame = Transforms.eastNorthUpToFixedFrame(Cartesian3.fromDegrees(+lon, +lat, +height));
  writeFileSync(output, JSON.stringify(Matrix4.toArray(frame)));
} else {
  console.error(`unknown command ${command}: read or enu`);
  process.exit(2);
}
