// Image → local command. Pods run as processes, so an image is only a name for an entry point in
// this work tree. Extend the map per cluster with `startLocalCluster({ images })`.
import { realpathSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** The project's Node 24 (never the system node): the real file behind node_modules/.bin/node. */
export function projectNode(): string {
  return realpathSync(join(REPO_ROOT, 'node_modules/.bin/node'));
}

export interface ImageCommand {
  /** Replaced by container.command when the pod sets one (like an image ENTRYPOINT). */
  entrypoint: string[];
  /** Replaced by container.args when the pod sets them (like an image CMD). */
  args?: string[];
  /** Working directory of the process; relative command paths resolve against it. */
  workingDir?: string;
}

/** Keyed by repository (the image reference without tag or digest). */
export type ImageMap = Record<string, ImageCommand>;

export function defaultImages(): ImageMap {
  const node = projectNode();
  const entry = (file: string): ImageCommand => ({
    entrypoint: [node, join(REPO_ROOT, file)],
    workingDir: REPO_ROOT,
  });
  return {
    'pivot/node-agent': entry('node-agent/src/main.ts'),
    'pivot/operator': entry('operator/src/main.ts'),
    'pivot/testserver': entry('hack/local-cluster/testserver.ts'),
  };
}

/** `registry:5000/pivot/x:1.2@sha256:…` → `registry:5000/pivot/x`. */
export function imageRepository(image: string): string {
  const noDigest = image.split('@')[0];
  const lastSlash = noDigest.lastIndexOf('/');
  const colon = noDigest.lastIndexOf(':');
  return colon > lastSlash ? noDigest.slice(0, colon) : noDigest;
}

export type ResolvedCommand = { ok: true; argv: string[]; cwd: string } | { ok: false; message: string };

/** Kubernetes semantics: command replaces the entry point (and default args), args replace the default args. */
export function resolveCommand(
  images: ImageMap,
  image: string,
  command: string[] | undefined,
  args: string[] | undefined,
): ResolvedCommand {
  const mapped =
    images[imageRepository(image)] ?? images[imageRepository(image).replace(/^docker\.io\/(library\/)?/, '')];
  if (!mapped) {
    const known = Object.keys(images).sort().join(', ');
    return {
      ok: false,
      message: `image "${image}" has no local command in the local cluster's image map (known: ${known})`,
    };
  }
  // A command without args drops the image's default args too (Kubernetes semantics).
  const defaultArgs = command?.length ? [] : (mapped.args ?? []);
  const argv = [...(command?.length ? command : mapped.entrypoint), ...(args ?? defaultArgs)];
  return { ok: true, argv, cwd: mapped.workingDir ?? REPO_ROOT };
}

/** `$(VAR)` references expand from the variables given; `$$` escapes to `$` (Kubernetes semantics). */
export function expandReferences(text: string, vars: Record<string, string>): string {
  return text.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (all, name?: string) =>
    all === '$$' ? '$' : name !== undefined && name in vars ? vars[name] : all,
  );
}
