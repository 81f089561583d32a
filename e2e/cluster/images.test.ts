// Pure decisions of the kubelet stand-in: image → command (Kubernetes command/args semantics) and
// $(VAR) expansion. Table-driven; no cluster needed.
import { describe, expect, it } from '@jest/globals';
import {
  expandReferences,
  imageRepository,
  resolveCommand,
  type ImageMap,
} from '../../hack/local-cluster/images.ts';

const images: ImageMap = {
  'pivot/testserver': {
    entrypoint: ['/node', '/repo/testserver.ts'],
    args: ['--default'],
    workingDir: '/repo',
  },
  busybox: { entrypoint: ['/bin/sh'] },
};

describe('imageRepository', () => {
  it.each([
    ['pivot/testserver', 'pivot/testserver'],
    ['pivot/testserver:1.2', 'pivot/testserver'],
    ['registry:5000/pivot/x:1.2@sha256:abc', 'registry:5000/pivot/x'],
    ['registry:5000/pivot/x', 'registry:5000/pivot/x'],
  ])('%s → %s', (image, repository) => {
    expect(imageRepository(image)).toBe(repository);
  });
});

describe('resolveCommand', () => {
  it.each([
    [
      'image defaults',
      'pivot/testserver:dev',
      undefined,
      undefined,
      ['/node', '/repo/testserver.ts', '--default'],
    ],
    [
      'args replace the default args',
      'pivot/testserver:dev',
      undefined,
      ['--x'],
      ['/node', '/repo/testserver.ts', '--x'],
    ],
    [
      'command replaces entrypoint and default args',
      'pivot/testserver',
      ['sh', '-c'],
      undefined,
      ['sh', '-c'],
    ],
    ['command and args', 'pivot/testserver', ['sh', '-c'], ['echo hi'], ['sh', '-c', 'echo hi']],
    ['docker.io/library prefix', 'docker.io/library/busybox:1', undefined, undefined, ['/bin/sh']],
    ['short Docker Hub name', 'busybox:1', undefined, undefined, ['/bin/sh']],
  ])('%s', (_, image, command, args, argv) => {
    expect(resolveCommand(images, image, command, args)).toMatchObject({ ok: true, argv });
  });

  it('an unknown image is an error naming the image and the known ones', () => {
    expect(resolveCommand(images, 'nope/x:1', undefined, undefined)).toEqual({
      ok: false,
      message:
        'image "nope/x:1" has no local command in the local cluster\'s image map (known: busybox, pivot/testserver)',
    });
  });
});

describe('expandReferences', () => {
  const vars = { POD_IP: '10.244.1.2', PORT: '7000' };
  it.each([
    ['http://$(POD_IP):$(PORT)', 'http://10.244.1.2:7000'],
    ['$(MISSING) stays', '$(MISSING) stays'],
    ['$$(POD_IP) is escaped', '$(POD_IP) is escaped'],
    ['cost: $$5', 'cost: $5'],
    ['no refs', 'no refs'],
  ])('%s → %s', (text, expanded) => {
    expect(expandReferences(text, vars)).toBe(expanded);
  });
});
