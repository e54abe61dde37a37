/*
 * Fault injection points, for tests of the failure paths that a full disk or
 * a failing drive would take. Off unless configured; a check costs one load.
 *
 * Configure with m3_fault_set() or the environment variable
 *   M3_FAULT="point=ERRNO[@N][,point=ERRNO[@N]...]"
 * e.g. M3_FAULT="segment.write=ENOSPC@3": the 3rd and later writes to a
 * segment fail with ENOSPC. Points: segment.write, segment.sync,
 * catalog.write, index.write, io_uring.submit (io_uring_enter fails hard;
 * the read backend drains, replaces its ring and finishes with pread).
 * admin.between is a pause, not a failure (any ERRNO): m3-server's Put
 * sleeps 20 ms between its store write and its index write (tests of
 * writers racing for one id).
 */
#ifndef M3_FAULT_H
#define M3_FAULT_H

/* Make point fail with errno value err from its nth hit on (n >= 1). err 0
 * clears the point. Returns 0 or M3_EINVAL. */
int m3_fault_set(const char *point, int err, unsigned nth);

/* Clear every point. */
void m3_fault_clear(void);

/* 0, or the errno value to fail with at this hit of point. */
int m3__fault(const char *point);

#endif /* M3_FAULT_H */
