/*
 * Per-op counters for the profile harness (profile_main.c): adaptq_run, built with -DADAPTQ_PROFILE,
 * calls adaptq_profile_op_begin/end (adaptq.h) around every op, and profile.c adds each op's counter
 * ticks up over the images run.
 *
 *   default              QEMU's mps2-an500: CMSDK timer0 at 25 MHz. QEMU runs with -icount shift=0,
 *                        where one guest instruction is one nanosecond of virtual time, so a tick is 40
 *                        instructions: the harness counts instructions, not cycles (QEMU models no
 *                        pipeline, caches or wait states).
 *   -DADAPTQ_PROFILE_DWT a real Cortex-M7: the DWT cycle counter. QEMU does not model the DWT, so
 *                        this build only runs on a chip.
 */
#ifndef ADAPTQ_PROFILE_H
#define ADAPTQ_PROFILE_H

#include <stdint.h>

#ifdef ADAPTQ_PROFILE_DWT
#define ADAPTQ_PROFILE_COUNTER "cycles"
#define ADAPTQ_PROFILE_UNITS_PER_TICK 1u
#else
#define ADAPTQ_PROFILE_COUNTER "instructions"
#define ADAPTQ_PROFILE_UNITS_PER_TICK 40u /* 1 ns per instruction, 40 ns per tick of a 25 MHz timer */
#endif

/* The calibration loop: this many iterations of subs + bne, two instructions each. */
#define ADAPTQ_PROFILE_CALIBRATION_LOOPS 1000000u

/* Starts the counter and clears the per-op sums; call once before the first image. */
void adaptq_profile_start(void);

/* The free-running counter in ticks; differences of two readings are exact across a wrap. */
uint32_t adaptq_profile_now(void);

/* Counter units (instructions or cycles) of the calibration loop, which executes
 * 2 * ADAPTQ_PROFILE_CALIBRATION_LOOPS instructions. */
uint64_t adaptq_profile_calibrate(void);

/* Units accumulated by op `op_index` since adaptq_profile_start, and how often it ran. */
uint64_t adaptq_profile_op_units(uint16_t op_index);
uint32_t adaptq_profile_op_calls(uint16_t op_index);

#endif
