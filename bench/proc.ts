// What /proc says about a benchmarked process: CPU used so far and resident memory.
import { readFileSync } from 'node:fs';

// USER_HZ: 100 on every Linux this runs on (getconf CLK_TCK).
const CLOCK_TICKS_PER_SECOND = 100;

/** CPU seconds (user + system, all threads) used so far by these processes; exited ones count 0. */
export function cpuSecondsOf(pids: readonly number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // exited between listing and reading
    }
  }
  return ticks / CLOCK_TICKS_PER_SECOND;
}

/** Resident memory of a process in MiB: all of it, and the anonymous part (heap, not mapped files). */
export function rssMiB(pid: number): { total: number; anon: number } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0);
    return { total: kb('VmRSS') / 1024, anon: kb('RssAnon') / 1024 };
  } catch {
    return { total: 0, anon: 0 };
  }
}
