/*
 * Start-up for QEMU's mps2-an500 board (Cortex-M7): the vector table at address 0 and a reset handler
 * that enables the FPU before anything touches a float register, then enters newlib's rdimon start-up
 * (_start), which takes the stack and heap from the semihosting HEAPINFO call, clears .bss, runs main
 * and passes its return value to the host through semihosting exit.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern void _start(void);
extern uint32_t __stack_top;

#define CPACR (*(volatile uint32_t *)0xe000ed88u)

void adaptq_reset_handler(void)
{
    CPACR |= 0xfu << 20; /* CP10 and CP11: full access */
    __asm volatile("dsb\n\tisb" ::: "memory");
    _start();
    for (;;) {
    }
}

/* A fault ends the run with a message and a distinct status instead of hanging QEMU. */
void adaptq_fault_handler(void)
{
    fputs("adaptq: processor fault\n", stderr);
    exit(3);
}

typedef void (*vector)(void);

__attribute__((section(".vectors"), used)) const vector adaptq_vectors[16] = {
    (vector)(uintptr_t)&__stack_top, adaptq_reset_handler,
    adaptq_fault_handler, /* NMI */
    adaptq_fault_handler, /* HardFault */
    adaptq_fault_handler, /* MemManage */
    adaptq_fault_handler, /* BusFault */
    adaptq_fault_handler, /* UsageFault */
};
