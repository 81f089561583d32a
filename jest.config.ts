import type { Config } from 'jest';

const common = {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  moduleFileExtensions: ['ts', 'js', 'cjs', 'mjs', 'json'],
  transform: { '^.+\\.ts$': '<rootDir>/hack/jest/strip-types-transform.cjs' },
};

// Three projects so each tier can be run alone: pure unit tests, tests against real agent
// processes, and tests against the real Kubernetes control plane (the local cluster).
const config: Config = {
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/{lib,node-agent,operator}/**/*.unit.test.ts'] },
    {
      ...common,
      displayName: 'agent',
      testMatch: ['<rootDir>/node-agent/test/**/*.test.ts', '<rootDir>/e2e/agent/**/*.test.ts'],
      testPathIgnorePatterns: ['\\.unit\\.test\\.ts$'],
    },
    {
      ...common,
      displayName: 'cluster',
      testMatch: ['<rootDir>/e2e/cluster/**/*.test.ts', '<rootDir>/operator/test/**/*.test.ts'],
      testPathIgnorePatterns: ['\\.unit\\.test\\.ts$'],
      // One real local cluster (hack/local-cluster) per run; tests find it via KUBECONFIG / PIVOT_CLUSTER_STATE.
      globalSetup: '<rootDir>/e2e/cluster/global-setup.ts',
      globalTeardown: '<rootDir>/e2e/cluster/global-teardown.ts',
    },
  ],
};

export default config;
