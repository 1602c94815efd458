/* cluster_slots.h - Redis Cluster routing: which hash slot a key is in,
 * which master serves a slot, and the redirections that change that.
 * Pure: no I/O; the replies are hiredis's, the connections the caller's.
 *
 * A key's slot is CRC16 (XMODEM: polynomial 0x1021, initial 0) of the key
 * modulo 16384, or of its hash tag: the bytes between the first '{' and
 * the first '}' after it, when there is at least one byte between them
 * (Redis Cluster specification, "Hash tags"). Keys that share a tag, such
 * as every key of one channel named PREFIX{channel}..., are in one slot.
 *
 * A slot map holds the masters (by "host:port") and the owner of each slot,
 * filled from a CLUSTER SLOTS reply and corrected by MOVED redirections.
 * ASK is a one-time redirection: it does not change the map.
 *
 * Invariants: owner[s] is SLOTS_NONE or an index below nnodes; nodes are
 * never removed while the map lives (a node that no longer owns a slot
 * stays listed, so indices the caller holds stay valid); nnodes <=
 * SLOTS_MAX_NODES.
 */
#ifndef PW_CLUSTER_SLOTS_H
#define PW_CLUSTER_SLOTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SLOTS_COUNT     16384
#define SLOTS_NONE      0xFFFF
#define SLOTS_MAX_NODES 256
#define SLOTS_ADDR_MAX  300 /* "host:port" with a NUL */

struct redisReply;

/* CRC16-XMODEM of data[0..len). */
uint16_t slots_crc16(const char *data, size_t len);
/* The hash slot of key[0..len) (its hash tag when it has one). */
unsigned slots_key_slot(const char *key, size_t len);

typedef struct slot_map {
    uint16_t owner[SLOTS_COUNT];
    char node[SLOTS_MAX_NODES][SLOTS_ADDR_MAX];
    unsigned nnodes;
} slot_map;

/* Every slot unowned, no node. */
void slots_init(slot_map *m);

/* The index of node "host:port" (added when new), or -1 when the table is
 * full or host is empty or too long. */
int slots_node(slot_map *m, const char *host, int port);

/* Replace the owners with those of a CLUSTER SLOTS reply: an array of
 * [start, end, [host, port, ...], replica...]. An empty host is the node
 * that answered (answered_host; Redis 7 leaves it empty when the node has
 * no announced address); "?" is unknown: its slots become unowned. Returns
 * the number of slots owned after it, or -1 (map unchanged) when the reply
 * is not of that shape or a range is out of bounds. */
int slots_load(slot_map *m, const struct redisReply *r, const char *answered_host);

/* The master of slot, "host:port", or NULL when unknown. */
const char *slots_owner(const slot_map *m, unsigned slot);

/* A redirection in an error reply's text: "MOVED SLOT HOST:PORT" or "ASK
 * SLOT HOST:PORT" (HOST may be empty: the node that answered; an IPv6
 * address is split at its last ':'). */
typedef struct slots_redirect {
    bool ask;
    unsigned slot;
    char host[256];
    int port;
} slots_redirect;

/* 1 and *out when err is a redirection, 0 when it is another error, -1
 * when it starts like one but is malformed. */
int slots_parse_redirect(const char *err, slots_redirect *out);

/* Apply a MOVED: slot is now served by host:port (when host is empty, by
 * answered, the "host:port" that sent it). Returns the node index, or -1
 * (map unchanged) when the node cannot be recorded. An ASK changes nothing
 * and returns -1. */
int slots_apply(slot_map *m, const slots_redirect *rd, const char *answered);

#endif
