/*
 * The hooks adaptq_run calls under -DADAPTQ_PROFILE, over one free-running 32-bit counter (profile.h
 * says which). Each op's ticks are summed in 64 bits, so only a single op longer than one counter
 * period (171 s of QEMU's virtual time, 8.9 s of a 480 MHz core) could come out wrong.
 */
#include "profile.h"

#include "adaptq.h"
#include "profile_ops.h"

#ifdef ADAPTQ_PROFILE_DWT
/* Cortex-M7 debug registers (ARMv7-M Architecture Reference Manual, C1.6 and C1.8). */
#define DEMCR (*(volatile uint32_t *)0xe000edfcu)
#define DEMCR_TRCENA (1u << 24)
#define DWT_CTRL (*(volatile uint32_t *)0xe0001000u)
#define DWT_CTRL_CYCCNTENA 1u
#define DWT_CYCCNT (*(volatile uint32_t *)0xe0001004u)
/* The M7's DWT ignores writes until unlocked (CoreSight lock access register). */
#define DWT_LAR (*(volatile uint32_t *)0xe0001fb0u)
#define DWT_LAR_KEY 0xc5acce55u

static void counter_start(void)
{
    DEMCR |= DEMCR_TRCENA;
    DWT_LAR = DWT_LAR_KEY;
    DWT_CYCCNT = 0;
    DWT_CTRL |= DWT_CTRL_CYCCNTENA;
}

uint32_t adaptq_profile_now(void) { return DWT_CYCCNT; }
#else
/* CMSDK APB timer 0 of mps2-an500 (QEMU hw/timer/cmsdk-apb-timer.c): counts down from RELOAD at the
 * 25 MHz system clock and reloads on reaching 0, so with RELOAD = 2^32 - 1 its complement counts up
 * modulo 2^32. */
#define TIMER0_CTRL (*(volatile uint32_t *)0x40000000u)
#define TIMER0_VALUE (*(volatile uint32_t *)0x40000004u)
#define TIMER0_RELOAD (*(volatile uint32_t *)0x40000008u)
#define TIMER_CTRL_ENABLE 1u

static void counter_start(void)
{
    TIMER0_CTRL = 0;
    TIMER0_RELOAD = 0xffffffffu; /* also loads VALUE */
    TIMER0_CTRL = TIMER_CTRL_ENABLE;
}

uint32_t adaptq_profile_now(void) { return ~TIMER0_VALUE; }
#endif

static uint64_t op_ticks[ADAPTQ_PROFILE_OPS];
static uint32_t op_calls[ADAPTQ_PROFILE_OPS];
static uint32_t op_started;

void adaptq_profile_start(void)
{
    uint16_t i;
    for (i = 0; i < ADAPTQ_PROFILE_OPS; ++i) {
        op_ticks[i] = 0;
        op_calls[i] = 0;
    }
    counter_start();
}

void adaptq_profile_op_begin(uint16_t op_index)
{
    (void)op_index;
    op_started = adaptq_profile_now();
}

void adaptq_profile_op_end(uint16_t op_index)
{
    uint32_t elapsed = adaptq_profile_now() - op_started;
    if (op_index < ADAPTQ_PROFILE_OPS) { /* a network of more ops than profile_ops.h: its calls stay 0 */
        op_ticks[op_index] += elapsed;
        ++op_calls[op_index];
    }
}

uint64_t adaptq_profile_op_units(uint16_t op_index)
{
    return op_index < ADAPTQ_PROFILE_OPS ? op_ticks[op_index] * ADAPTQ_PROFILE_UNITS_PER_TICK : 0;
}

uint32_t adaptq_profile_op_calls(uint16_t op_index)
{
    return op_index < ADAPTQ_PROFILE_OPS ? op_calls[op_index] : 0;
}

uint64_t adaptq_profile_calibrate(void)
{
    uint32_t loops = ADAPTQ_PROFILE_CALIBRATION_LOOPS, start, end;
    start = adaptq_profile_now();
    /* Two instructions per iteration whatever the compiler does around it: the loop is fixed asm. */
    __asm volatile("1:\n\tsubs %0, %0, #1\n\tbne 1b" : "+r"(loops) : : "cc");
    end = adaptq_profile_now();
    return (uint64_t)(uint32_t)(end - start) * ADAPTQ_PROFILE_UNITS_PER_TICK;
}
