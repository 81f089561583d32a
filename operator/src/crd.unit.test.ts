import { describe, expect, it } from '@jest/globals';
import { loadYaml, type V1CustomResourceDefinition } from '@kubernetes/client-node';
import { readFileSync } from 'node:fs';

const root = new URL('../../', import.meta.url);
const source = readFileSync(new URL('crds/pivotcluster.yaml', root), 'utf8');
const chartCopy = readFileSync(new URL('charts/pivot/crds/pivotcluster.yaml', root), 'utf8');

// client-node deserializes into its typed model (x-kubernetes-validations → x_kubernetes_validations, default → _default).
const crd = loadYaml<V1CustomResourceDefinition>(source);
const version = crd.spec.versions[0]!;
const spec = version.schema!.openAPIV3Schema!.properties!.spec!;
const p = spec.properties!;

describe('PivotCluster CRD', () => {
  it('the chart ships a byte-identical copy of crds/pivotcluster.yaml', () => {
    expect(chartCopy).toBe(source);
  });

  it('has the contract names, subresources and printer columns', () => {
    expect(crd.spec.names).toMatchObject({
      kind: 'PivotCluster',
      plural: 'pivotclusters',
      shortNames: ['pc', 'pivot'],
    });
    expect(version.subresources).toEqual({
      status: {},
      scale: {
        specReplicasPath: '.spec.replicas',
        statusReplicasPath: '.status.replicas',
        labelSelectorPath: '.status.selector',
      },
    });
    expect(version.additionalPrinterColumns!.map((c) => c.name)).toEqual([
      'Ready',
      'Shards',
      'RF',
      'Epoch',
      'Reason',
      'Age',
    ]);
  });

  it('defaults every field of the contract example', () => {
    expect([
      p.replicas!._default,
      p.shards!._default,
      p.replicationFactor!._default,
      p.writeConcern!._default,
      p.retryPolicy!.properties!.maxAttempts!._default,
      p.retryPolicy!.properties!.initialBackoff!._default,
      p.retryPolicy!.properties!.maxBackoff!._default,
      p.retryPolicy!.properties!.multiplier!._default,
      p.retryPolicy!.properties!.timeout!._default,
      p.failover!.properties!.notReadyGracePeriod!._default,
      p.storage!.properties!.size!._default,
    ]).toEqual([3, 16, 3, 'majority', 5, '100ms', '5s', 2, '2s', '1s', '1Gi']);
  });

  it('validates cross-field and immutability rules with CEL', () => {
    expect(spec.x_kubernetes_validations![0]!.rule).toContain('self.replicationFactor <= self.replicas');
    expect(p.shards!.x_kubernetes_validations![0]!.rule).toBe('self == oldSelf');
  });
});
