/*
The LLMC_* numbers of tests/test_llmc_compat.py, computed by llm.c's own C.

This file is ours; llm.c is not in this repository. It is compiled inside an llm.c checkout's
include path (tests/llmc/regenerate.py fetches one at the pinned commit and runs):

    gcc -O2 -I <llm.c> -o llmc_constants tests/llmc/llmc_constants.c -lm    (no OpenMP)
    ./llmc_constants tiny.bin batch.bin 'shard_*.bin'

tiny.bin   the tiny model of test_llmc_compat.tiny_model_and_batch(), an llm.c v3 checkpoint
batch.bin  its batch: B*T int32 inputs, then B*T int32 targets (B=2, T=8)
shard_*    the three shards of test_llmc_compat.llmc_shuffle_shards()

It prints one `NAME = value` line per constant, floats as %.9g (enough digits for a float32 to
read back exactly).
*/
#define TESTING             // train_gpt2.c without its main()
#include "train_gpt2.c"     // defines: gpt2_build_from_checkpoint, gpt2_forward, gpt2_zero_grad,
                            // gpt2_backward, gpt2_update, gpt2_free; and via llmc/dataloader.h:
                            // dataloader_init, dataloader_next_batch, dataloader_free

#define B 2
#define T 8
#define SHUFFLED_STEPS 14

// step 0's logits, probs and gradients, then three steps of AdamW on one batch
void fixed_batch(const char* checkpoint, const char* batch_path) {
    GPT2 model;
    gpt2_build_from_checkpoint(&model, checkpoint);
    int batch[2 * B * T];  // inputs (B,T), then targets (B,T)
    FILE* f = fopenCheck(batch_path, "rb");
    freadCheck(batch, sizeof(int), 2 * B * T, f);
    fcloseCheck(f);
    int* x = batch;
    int* y = batch + B * T;
    size_t V = model.config.vocab_size, Vp = model.config.padded_vocab_size, C = model.config.channels;
    float losses[3];
    for (int step = 0; step < 3; step++) {
        gpt2_forward(&model, x, y, B, T);
        losses[step] = model.mean_loss;
        if (step == 0) {
            float* logits = model.acts.logits;  // (B,T,Vp)
            printf("LLMC_LOGITS_000 = (%.9g, %.9g, %.9g)\n", logits[0], logits[1], logits[2]);
            printf("LLMC_LOGITS_LAST = %.9g\n", logits[((B - 1) * T + T - 1) * Vp + V - 1]);
            printf("LLMC_PROBS_000 = %.9g\n", model.acts.probs[0]);
        }
        gpt2_zero_grad(&model);
        gpt2_backward(&model);
        if (step == 0) {
            float* dwte_row = model.grads.wte + (size_t)x[0] * C;
            printf("LLMC_DWTE = (%.9g, %.9g)\n", dwte_row[0], dwte_row[1]);
            printf("LLMC_DQKVW_000 = %.9g\n", model.grads.qkvw[0]);
            printf("LLMC_DLNFB_0 = %.9g\n", model.grads.lnfb[0]);
        }
        gpt2_update(&model, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step + 1);
    }
    printf("LLMC_LOSSES = (%.9g, %.9g, %.9g)\n", losses[0], losses[1], losses[2]);
    gpt2_free(&model);
}

// shuffled batches from three shards (into a second epoch), a step of AdamW on each
void shuffled_shards(const char* checkpoint, const char* pattern) {
    GPT2 model;
    gpt2_build_from_checkpoint(&model, checkpoint);
    DataLoader loader;
    dataloader_init(&loader, pattern, B, T, 0, 1, 1);
    int x0[SHUFFLED_STEPS];
    float losses[SHUFFLED_STEPS];
    for (int step = 0; step < SHUFFLED_STEPS; step++) {
        dataloader_next_batch(&loader);
        x0[step] = loader.inputs[0];
        gpt2_forward(&model, loader.inputs, loader.targets, B, T);
        losses[step] = model.mean_loss;
        gpt2_zero_grad(&model);
        gpt2_backward(&model);
        gpt2_update(&model, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, step + 1);
    }
    printf("LLMC_SHUFFLED_X0 = (");
    for (int i = 0; i < SHUFFLED_STEPS; i++) { printf(i ? ", %d" : "%d", x0[i]); }
    printf(")\nLLMC_SHUFFLED_LOSSES = (");
    for (int i = 0; i < SHUFFLED_STEPS; i++) { printf(i ? ", %.9g" : "%.9g", losses[i]); }
    printf(")\n");
    dataloader_free(&loader);
    gpt2_free(&model);
}

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s tiny.bin batch.bin 'shard_*.bin'\n", argv[0]);
        return 2;
    }
    fixed_batch(argv[1], argv[2]);
    shuffled_shards(argv[1], argv[3]);
    return 0;
}
