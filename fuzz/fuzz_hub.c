/* fuzz_hub.c - libFuzzer target for the hub's state machine (src/hub.c)
 * on the simulated Redis of tests/unit/hub_sim.c.
 *
 * The input is a script: its first two bytes choose the history length and
 * the read budget, then each pair of bytes is one step (sim_step: publish,
 * run or answer a command, deliver pub/sub, subscribe with some since and
 * epoch, leave, time out, resume, let time pass, drop or restore a
 * connection, restart Redis with or without losing messages, forget a
 * channel). The checker aborts on a gap, a duplicate, wrong content, a
 * false "up to date", a violated invariant (hub_check) or, after the script
 * and sim_settle, a subscriber that is not up to date.
 *
 *   clang -std=c11 -D_GNU_SOURCE -DPW_CHECK_INVARIANTS -g -O1 \
 *     -fsanitize=fuzzer,address,undefined -Isrc -Itests/unit fuzz/fuzz_hub.c \
 *     tests/unit/hub_sim.c src/hub.c src/loop.c src/buf.c src/envelope.c src/log.c
 */
#include <stddef.h>
#include <stdint.h>

#include "hub_sim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > 4096)
        return 0;
    unsigned history = 2 + data[0] % 30;
    unsigned budget = data[1] & 1 ? 1u << 20 : 120u + data[1];
    sim *s = sim_new(history, budget, false);
    for (size_t i = 2; i + 1 < size; i += 2)
        sim_step(s, data[i], data[i + 1]);
    sim_settle(s);
    sim_free(s);
    return 0;
}
