// The scaffolding the cluster benchmarks (failover.ts, operator.ts) share: run the body, report a
// failure, and remove what the run started exactly once, whether the body returns, throws or the
// run is interrupted (SIGINT/SIGTERM: exit 130 once the cleanup is done).

export interface BenchRun {
  /** Says what the run failed with. */
  name: string;
  body: () => Promise<void>;
  /** Removes what the body started; each step of it should not throw. */
  cleanup: () => Promise<void>;
  /** More to print after a failure (e.g. the operator's log), if there is any. */
  failureDetail?: () => string | undefined;
}

export async function runWithTeardown(run: BenchRun): Promise<void> {
  let cleaned: Promise<void> | null = null;
  const teardown = () => (cleaned ??= run.cleanup());
  const onSignal = () => void teardown().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    await run.body();
  } catch (error) {
    console.error(`${run.name} failed: ${(error as Error).message}`);
    const detail = run.failureDetail?.();
    if (detail) console.error(detail);
    process.exitCode = 1;
  } finally {
    await teardown();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
