import { describe, expect, it } from '@jest/globals';
import { decide, observe, type LeaseRecord } from './leader-election.ts';

const rec = (holder: string, renewTime = 't1', transitions = 3): LeaseRecord => ({
  holder,
  leaseDurationSeconds: 15,
  renewTime,
  transitions,
});

describe('decide', () => {
  it.each([
    { name: 'no lease: create it', obs: null, now: 0, want: { action: 'create' } },
    {
      name: 'we hold it: renew',
      obs: { record: rec('me'), observedAt: 0 },
      now: 60_000,
      want: { action: 'renew' },
    },
    {
      name: 'another holder, fresh: wait until it expires',
      obs: { record: rec('other'), observedAt: 10_000 },
      now: 20_000,
      want: { action: 'wait', holder: 'other', expiresInMs: 5_000 },
    },
    {
      name: 'another holder, not renewed for the lease duration: take over',
      obs: { record: rec('other'), observedAt: 10_000 },
      now: 25_000,
      want: { action: 'acquire', transitions: 4 },
    },
    {
      name: 'released lease (empty holder): take over at once',
      obs: { record: rec(''), observedAt: 10_000 },
      now: 10_001,
      want: { action: 'acquire', transitions: 4 },
    },
  ])('$name', ({ obs, now, want }) => {
    expect(decide(obs, 'me', now)).toEqual(want);
  });
});

describe('observe', () => {
  it('restarts the expiry clock only when the record changes (local clock, not the remote stamp)', () => {
    const first = observe(null, rec('other', 't1'), 1000)!;
    expect(observe(first, rec('other', 't1'), 9000)).toBe(first);
    const renewed = observe(first, rec('other', 't2'), 9000)!;
    expect(renewed.observedAt).toBe(9000);
    // A leader that keeps renewing is never taken over; one that stops is, 15 s after the last renewal seen.
    expect(decide(renewed, 'me', 9000 + 14_999).action).toBe('wait');
    expect(decide(renewed, 'me', 9000 + 15_000).action).toBe('acquire');
  });

  it('forgets a deleted lease', () => {
    expect(observe(observe(null, rec('x'), 0), null, 5)).toBeNull();
  });
});
