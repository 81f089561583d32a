'use strict';
// Jest transform that runs TypeScript the way Node 24 itself does: by erasing type syntax.
// The project uses only erasable TypeScript (tsconfig `erasableSyntaxOnly`), so tests execute
// exactly the code that `node file.ts` executes in production, with no separate build step.
const { stripTypeScriptTypes } = require('node:module');
const { createHash } = require('node:crypto');

module.exports = {
  process(sourceText) {
    return { code: stripTypeScriptTypes(sourceText, { mode: 'strip' }) };
  },
  getCacheKey(sourceText, sourcePath) {
    return createHash('sha1').update(process.version).update(sourcePath).update(sourceText).digest('hex');
  },
};
