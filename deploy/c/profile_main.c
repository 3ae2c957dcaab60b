/*
 * Profile harness (make profile-m7): runs the first ADAPTQ_PROFILE_IMAGES embedded test images through
 * adaptq_predict with the per-op hooks on, checks every output byte as main.c does, and prints, for
 * deploy/profiling.py to parse:
 *   counter instructions 40        what is counted (instructions or cycles), units per counter tick
 *   images 2
 *   calibration 2000040 2000000    the calibration loop: counted, instructions it executes
 *   op 0 61320 quantize            per op: counter units per image (rounded), the op's name
 *   total 12345678                 adaptq_predict per image, hooks included
 *   accuracy: X/N
 *   bit-exact: K/N                 (last line)
 * Exit status 0 only when the images are bit-exact, the arena guard is intact, every op ran once per
 * image and, on QEMU, the calibration loop reads as the instructions it executes.
 */
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "profile.h"
#include "profile_ops.h"
#include "test_data.h"

#ifndef ADAPTQ_PROFILE_IMAGES
#define ADAPTQ_PROFILE_IMAGES 2
#endif
#if ADAPTQ_PROFILE_IMAGES < ADAPTQ_TEST_COUNT
#define PROFILE_COUNT ADAPTQ_PROFILE_IMAGES
#else
#define PROFILE_COUNT ADAPTQ_TEST_COUNT
#endif
#define GUARD_BYTE 0xa5u

static const char *const op_names[ADAPTQ_PROFILE_OPS] = ADAPTQ_PROFILE_OP_NAMES;
static float image[ADAPTQ_INPUT_SIZE];
static float output[ADAPTQ_OUTPUT_SIZE];

/* Index of the largest logit; NaN never wins. */
static int argmax(const float *v, int n)
{
    int i, best = 0;
    for (i = 1; i < n; ++i)
        if (v[i] > v[best] || v[best] != v[best])
            best = i;
    return best;
}

static unsigned long long per_image(uint64_t units)
{
    return (unsigned long long)((units + PROFILE_COUNT / 2) / PROFILE_COUNT);
}

/* QEMU counts exactly 2 instructions per loop iteration, give or take one tick and the few
 * instructions around the loop; a miss means the timer does not run as assumed (no -icount shift=0). */
static int calibration_ok(uint64_t counted)
{
#ifdef ADAPTQ_PROFILE_DWT
    (void)counted;
    return 1; /* a real core's cycles per iteration depend on its pipeline: nothing to check */
#else
    uint64_t expected = 2ull * ADAPTQ_PROFILE_CALIBRATION_LOOPS;
    uint64_t slack = 4ull * ADAPTQ_PROFILE_UNITS_PER_TICK;
    return counted + slack >= expected && counted <= expected + slack;
#endif
}

int main(void)
{
    int i, exact = 0, correct = 0, guard_ok = 1, calls_ok = 1, calibrated;
    uint64_t total = 0, calibration;
    uint16_t op;
    memset(adaptq_arena + ADAPTQ_ARENA_BYTES, GUARD_BYTE, ADAPTQ_GUARD_BYTES);
    adaptq_profile_start();
    calibration = adaptq_profile_calibrate();
    calibrated = calibration_ok(calibration);
    for (i = 0; i < PROFILE_COUNT; ++i) {
        const uint32_t *want = &adaptq_test_expected[(long)i * ADAPTQ_OUTPUT_SIZE];
        uint32_t start;
        int status;
        memcpy(image, &adaptq_test_inputs[(long)i * ADAPTQ_INPUT_SIZE], sizeof image);
        start = adaptq_profile_now();
        status = adaptq_predict(image, output);
        total += (uint32_t)(adaptq_profile_now() - start);
        if (status != 0) {
            printf("image %d: adaptq_predict failed\n", i);
            continue;
        }
        if (memcmp(output, want, sizeof output) == 0)
            ++exact;
        else
            printf("image %d: outputs differ from the reference\n", i);
        if (argmax(output, ADAPTQ_OUTPUT_SIZE) == adaptq_test_labels[i])
            ++correct;
    }
    for (i = 0; i < ADAPTQ_GUARD_BYTES; ++i)
        if (adaptq_arena[ADAPTQ_ARENA_BYTES + i] != GUARD_BYTE)
            guard_ok = 0;
    printf("counter %s %u\n", ADAPTQ_PROFILE_COUNTER, (unsigned)ADAPTQ_PROFILE_UNITS_PER_TICK);
    printf("images %d\n", PROFILE_COUNT);
    printf("calibration %llu %llu\n", (unsigned long long)calibration,
           2ull * ADAPTQ_PROFILE_CALIBRATION_LOOPS);
    if (!calibrated)
        printf("calibration: the loop should read as the instructions it executes; is QEMU run with "
               "-icount shift=0?\n");
    for (op = 0; op < ADAPTQ_PROFILE_OPS; ++op) {
        if (adaptq_profile_op_calls(op) != PROFILE_COUNT) {
            printf("op %u ran %lu times for %d images\n", (unsigned)op,
                   (unsigned long)adaptq_profile_op_calls(op), PROFILE_COUNT);
            calls_ok = 0;
        }
        printf("op %u %llu %s\n", (unsigned)op, per_image(adaptq_profile_op_units(op)), op_names[op]);
    }
    printf("total %llu\n", per_image(total * ADAPTQ_PROFILE_UNITS_PER_TICK));
    if (!guard_ok)
        printf("arena guard: overwritten\n");
    printf("accuracy: %d/%d\n", correct, PROFILE_COUNT);
    printf("bit-exact: %d/%d\n", exact, PROFILE_COUNT);
    return (exact == PROFILE_COUNT && guard_ok && calls_ok && calibrated) ? 0 : 1;
}
