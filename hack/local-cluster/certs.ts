// Certificates for the local control plane, made with openssl: a CA, the API server's serving
// certificate, an admin client certificate in system:masters, and the service-account key pair.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from './run.ts';

export interface ClusterCerts {
  dir: string;
  caCert: string;
  caKey: string;
  apiserverCert: string;
  apiserverKey: string;
  adminCert: string;
  adminKey: string;
  serviceAccountKey: string;
  serviceAccountPub: string;
}

export function certPaths(dir: string): ClusterCerts {
  return {
    dir,
    caCert: join(dir, 'ca.crt'),
    caKey: join(dir, 'ca.key'),
    apiserverCert: join(dir, 'apiserver.crt'),
    apiserverKey: join(dir, 'apiserver.key'),
    adminCert: join(dir, 'admin.crt'),
    adminKey: join(dir, 'admin.key'),
    serviceAccountKey: join(dir, 'sa.key'),
    serviceAccountPub: join(dir, 'sa.pub'),
  };
}

const DAYS = '30';
const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

async function signedCert(
  c: ClusterCerts,
  name: string,
  subject: string,
  extensions: string,
): Promise<{ cert: string; key: string }> {
  const key = join(c.dir, `${name}.key`);
  const csr = join(c.dir, `${name}.csr`);
  const ext = join(c.dir, `${name}.ext`);
  const cert = join(c.dir, `${name}.crt`);
  await run('openssl', ['req', '-new', ...EC, '-keyout', key, '-out', csr, '-subj', subject]);
  await writeFile(ext, extensions);
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    c.caCert,
    '-CAkey',
    c.caKey,
    '-CAcreateserial',
    '-days',
    DAYS,
    '-out',
    cert,
    '-extfile',
    ext,
  ]);
  return { cert, key };
}

/** `apiserverIPs` become IP SANs of the serving cert (host address, bridge gateway, service IP). */
export async function generateCerts(dir: string, apiserverIPs: string[]): Promise<ClusterCerts> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const c = certPaths(dir);
  await run('openssl', [
    'req',
    '-x509',
    ...EC,
    '-keyout',
    c.caKey,
    '-out',
    c.caCert,
    '-days',
    DAYS,
    '-subj',
    '/CN=pivot-local-cluster-ca',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  const dnsNames = [
    'localhost',
    'kubernetes',
    'kubernetes.default',
    'kubernetes.default.svc',
    'kubernetes.default.svc.cluster.local',
  ];
  const san = [...apiserverIPs.map((ip) => `IP:${ip}`), ...dnsNames.map((d) => `DNS:${d}`)].join(',');
  await signedCert(
    c,
    'apiserver',
    '/CN=kube-apiserver',
    `subjectAltName=${san}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n`,
  );
  await signedCert(
    c,
    'admin',
    '/O=system:masters/CN=pivot-admin',
    'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n',
  );
  await run('openssl', [
    'genpkey',
    '-algorithm',
    'RSA',
    '-pkeyopt',
    'rsa_keygen_bits:2048',
    '-out',
    c.serviceAccountKey,
  ]);
  await run('openssl', ['pkey', '-in', c.serviceAccountKey, '-pubout', '-out', c.serviceAccountPub]);
  return c;
}

/** A self-contained admin kubeconfig (certificates embedded), usable by kubectl, Helm and client-node. */
export async function writeKubeconfig(
  path: string,
  c: ClusterCerts,
  server: string,
  clusterName: string,
): Promise<void> {
  const b64 = async (p: string) => (await readFile(p)).toString('base64');
  const yaml = `apiVersion: v1
kind: Config
clusters:
- name: ${clusterName}
  cluster:
    server: ${server}
    certificate-authority-data: ${await b64(c.caCert)}
users:
- name: ${clusterName}-admin
  user:
    client-certificate-data: ${await b64(c.adminCert)}
    client-key-data: ${await b64(c.adminKey)}
contexts:
- name: ${clusterName}
  context:
    cluster: ${clusterName}
    user: ${clusterName}-admin
    namespace: default
current-context: ${clusterName}
`;
  await writeFile(path, yaml, { mode: 0o600 });
}
