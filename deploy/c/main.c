/*
 * Test harness: runs the embedded test images through adaptq_predict, compares every output byte with
 * the numpy reference's, checks that nothing wrote past the arena, and prints
 *   accuracy: X/N
 *   bit-exact: K/N      (last line)
 * Exit status 0 only when all N images are bit-exact and the arena guard is intact.
 */
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "test_data.h"

#define MAX_REPORTED 5
#define GUARD_BYTE 0xa5u

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

int main(void)
{
    int i, exact = 0, correct = 0, reported = 0, guard_ok = 1;
    memset(adaptq_arena + ADAPTQ_ARENA_BYTES, GUARD_BYTE, ADAPTQ_GUARD_BYTES);
    for (i = 0; i < ADAPTQ_TEST_COUNT; ++i) {
        uint32_t got[ADAPTQ_OUTPUT_SIZE];
        const uint32_t *want = &adaptq_test_expected[(long)i * ADAPTQ_OUTPUT_SIZE];
        int j, first_diff = -1;
        memcpy(image, &adaptq_test_inputs[(long)i * ADAPTQ_INPUT_SIZE], sizeof image);
        if (adaptq_predict(image, output) != 0) {
            printf("image %d: adaptq_predict failed\n", i);
            continue;
        }
        memcpy(got, output, sizeof got);
        for (j = 0; j < ADAPTQ_OUTPUT_SIZE && first_diff < 0; ++j)
            if (got[j] != want[j])
                first_diff = j;
        if (first_diff < 0)
            ++exact;
        else if (reported++ < MAX_REPORTED)
            printf("image %d: output[%d] = 0x%08lx, expected 0x%08lx\n", i, first_diff,
                   (unsigned long)got[first_diff], (unsigned long)want[first_diff]);
        if (argmax(output, ADAPTQ_OUTPUT_SIZE) == adaptq_test_labels[i])
            ++correct;
    }
    for (i = 0; i < ADAPTQ_GUARD_BYTES; ++i)
        if (adaptq_arena[ADAPTQ_ARENA_BYTES + i] != GUARD_BYTE)
            guard_ok = 0;
    if (!guard_ok)
        printf("arena guard: overwritten\n");
    printf("accuracy: %d/%d\n", correct, ADAPTQ_TEST_COUNT);
    printf("bit-exact: %d/%d\n", exact, ADAPTQ_TEST_COUNT);
    return (exact == ADAPTQ_TEST_COUNT && guard_ok) ? 0 : 1;
}
