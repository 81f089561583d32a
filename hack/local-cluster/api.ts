// Minimal JSON client for the local cluster's own components and tests (status patches, leases,
// deletes, readiness checks), authenticated with the cluster's admin certificate or, to act as a
// service account, a bearer token. Watches go through @kubernetes/client-node; this client keeps
// wire formats such as MicroTime and strategic-merge patches exact.
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import type { ClusterCerts } from './certs.ts';

export class ApiError extends Error {
  status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

export interface ApiClient {
  call<T = unknown>(method: string, path: string, body?: unknown, contentType?: string): Promise<T>;
}

/** With `bearerToken` the admin certificate is not presented: requests are that token's identity. */
export function apiClient(server: string, certs: ClusterCerts, bearerToken?: string): ApiClient {
  const agent = new Agent({
    keepAlive: true,
    ca: readFileSync(certs.caCert),
    ...(bearerToken ? {} : { cert: readFileSync(certs.adminCert), key: readFileSync(certs.adminKey) }),
  });
  const auth: Record<string, string> = bearerToken ? { authorization: `Bearer ${bearerToken}` } : {};
  return {
    call<T>(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<T> {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      return new Promise<T>((resolve, reject) => {
        const req = request(
          server + path,
          {
            method,
            agent,
            timeout: 15_000,
            // An explicit length: Node sends DELETE bodies neither chunked nor sized by default, which
            // would leave the body on the keep-alive connection as a garbage next request.
            headers: {
              ...auth,
              ...(payload
                ? { 'content-type': contentType, 'content-length': Buffer.byteLength(payload) }
                : {}),
            },
          },
          (res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (c: string) => (text += c));
            res.on('end', () => {
              const status = res.statusCode ?? 0;
              const json = (res.headers['content-type'] ?? '').includes('json');
              if (status >= 200 && status < 300)
                resolve((json && text ? JSON.parse(text) : text || undefined) as T);
              else reject(new ApiError(status, `${method} ${path}: ${status} ${text.slice(0, 300)}`));
            });
          },
        );
        req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timeout`)));
        req.on('error', reject);
        req.end(payload);
      });
    },
  };
}

/** MicroTime as the API server parses it (RFC 3339 with exactly six fractional digits). */
export function microTime(d = new Date()): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

/** Time (seconds precision), as used in conditions and container states. */
export function apiTime(d = new Date()): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}
