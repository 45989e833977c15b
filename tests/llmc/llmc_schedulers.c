/*
The LLMC_LR_* numbers of tests/test_optim.py, computed by llm.c's own llmc/schedulers.h.

This file is ours; llm.c is not in this repository. tests/llmc/regenerate.py compiles it inside an
llm.c checkout's include path and runs it:

    gcc -O2 -I <llm.c> -o llmc_schedulers tests/llmc/llmc_schedulers.c -lm
    ./llmc_schedulers

Each schedule is (type, learning rate, warmup iterations, train_num_batches, final fraction), as
train_gpt2.cu's -k, -l, -u, -x (or one epoch's steps) and -q pass them to lr_scheduler_init; it
prints `NAME = (lr of step s0, lr of step s1, ...)` with each float as %.9g (enough digits for a
float32 to read back exactly): every step of the short schedules, chosen steps of the long ones.
*/
#include <stdio.h>
#include <stdlib.h>
#include "llmc/schedulers.h"  // defines: LearningRateScheduler, lr_scheduler_init, get_learning_rate

// the learning rate at each of `steps` (n of them; NULL: every step 0..train_num_batches-1)
void print_schedule(const char* name, const char* type, float lr, int warmup, int train_num_batches,
                    float final_frac, const int* steps, int n) {
    LearningRateScheduler scheduler;
    lr_scheduler_init(&scheduler, type, lr, warmup, train_num_batches, final_frac);
    if (steps == NULL) { n = train_num_batches; }
    printf("%s = (", name);
    for (int i = 0; i < n; i++) {
        int step = steps == NULL ? i : steps[i];
        printf(i ? ", %.9g" : "%.9g", get_learning_rate(&scheduler, step));
    }
    printf(n == 1 ? ",)\n" : ")\n");
}

int main(void) {
    // the done-when recipe of tests/test_recipe.py: run_gpt2_124M.sh's -l 0.0006 -q 0.0 with -u 3,
    // one epoch of 8 steps
    print_schedule("LLMC_LR_RECIPE", "cosine", 6e-4f, 3, 8, 0.0f, NULL, 0);
    // every type, with a warmup and a final fraction
    print_schedule("LLMC_LR_COSINE", "cosine", 1e-3f, 2, 10, 0.1f, NULL, 0);
    print_schedule("LLMC_LR_LINEAR", "linear", 1e-3f, 2, 10, 0.1f, NULL, 0);
    print_schedule("LLMC_LR_CONSTANT", "constant", 1e-3f, 2, 5, 0.1f, NULL, 0);
    print_schedule("LLMC_LR_WSD", "wsd", 1e-3f, 3, 11, 0.0f, NULL, 0);
    // llmnb-train's default: -l 1e-4 and train_gpt2.cu's -k cosine -u 0 -q 1.0 (a constant lr)
    print_schedule("LLMC_LR_DEFAULT", "cosine", 1e-4f, 0, 6, 1.0f, NULL, 0);
    // run_gpt2_124M.sh (one epoch of fineweb10B: 18865 steps) and run_gpt2_350M.sh (-x 60000);
    // at step 5568 glibc's cosf is 1 ulp off the correctly rounded cosine, and so is the lr
    const int s124[] = {0, 1, 350, 698, 699, 700, 701, 5000, 5568, 9782, 18000, 18864};
    print_schedule("LLMC_LR_124M", "cosine", 6e-4f, 700, 18865, 0.0f, s124, sizeof(s124) / sizeof(int));
    const int s350[] = {0, 699, 700, 30350, 59999};
    print_schedule("LLMC_LR_350M", "cosine", 3e-4f, 700, 60000, 0.0f, s350, sizeof(s350) / sizeof(int));
    return 0;
}
