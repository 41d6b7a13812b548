/* send_receive: the anonymity API from C, end to end.
 *
 * Opens a session with two nodes of a running network (their local API sockets), sends a
 * 70,000-byte message from the first to the second with a reply SURB and the sender
 * revealed, checks that it arrives intact with the sender verified, replies through the
 * SURB, and waits for the ACK and the reply. Exits 0 on success.
 *
 *   mixed demo --serve nodes.txt &      # a local network; one "<id> <socket>" per line
 *   cc send_receive.c -I ffi/include -L target/release -lmixed -o send_receive
 *   ./send_receive <socket of node A> <socket of node B>
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mixed.h"

#define LEN 70000
#define PORT 7

struct state {
    const uint8_t *want;
    int got_message;
    int got_ack;
    int got_reply;
    uint8_t sent_id[16];
    uint8_t handle[65536];
    size_t handle_len;
};

static int on_b(const mixed_event *e, void *user) {
    struct state *s = user;
    if (e->kind != MIXED_EVENT_MESSAGE) return 0;
    if (e->data_len != LEN || memcmp(e->data, s->want, LEN) != 0) {
        fprintf(stderr, "B: a message of %zu bytes that is not ours\n", e->data_len);
        return 0;
    }
    if (!e->has_sender) {
        fprintf(stderr, "B: the sender was not revealed\n");
        return 0;
    }
    if (e->handle_len == 0 || e->handle_len > sizeof s->handle) {
        fprintf(stderr, "B: no reply handle\n");
        return 0;
    }
    memcpy(s->handle, e->handle, e->handle_len);
    s->handle_len = e->handle_len;
    s->got_message = 1;
    return 1;
}

static int on_a(const mixed_event *e, void *user) {
    struct state *s = user;
    if (e->kind == MIXED_EVENT_ACKNOWLEDGED && memcmp(e->id, s->sent_id, 16) == 0) {
        s->got_ack = 1;
    } else if (e->kind == MIXED_EVENT_MESSAGE && e->has_in_reply_to &&
               memcmp(e->in_reply_to, s->sent_id, 16) == 0 && e->data_len == 5 &&
               memcmp(e->data, "roger", 5) == 0) {
        s->got_reply = 1;
    } else if (e->kind == MIXED_EVENT_OFFLINE || e->kind == MIXED_EVENT_UNDELIVERED) {
        fprintf(stderr, "A: message not delivered (event %d)\n", e->kind);
    }
    return s->got_ack && s->got_reply;
}

static int check(int rc, const char *what, mixed_socket *s) {
    if (rc != MIXED_OK) {
        fprintf(stderr, "%s: %s (%s)\n", what, mixed_strerror(rc), s ? mixed_last_error(s) : "");
        exit(1);
    }
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <API socket of node A> <API socket of node B>\n", argv[0]);
        return 2;
    }
    mixed_socket *a = NULL, *b = NULL;
    check(mixed_socketanon(argv[1], 3, &a), "socketanon A", NULL);
    check(mixed_socketanon(argv[2], PORT, &b), "socketanon B", NULL);

    /* bad input: clear codes, not crashes */
    if (mixed_sendanon(NULL, NULL, NULL, 0, NULL, NULL) != MIXED_INVALID_ARGUMENT) return 1;
    uint8_t nobody[32] = {7};
    if (mixed_sendanon(a, nobody, (const uint8_t *)"x", 1, NULL, NULL) != MIXED_UNKNOWN_DESTINATION) {
        fprintf(stderr, "an unknown destination was not refused\n");
        return 1;
    }

    uint8_t b_id[32];
    check(mixed_node_id(b, b_id), "node id", b);
    uint8_t *data = malloc(LEN);
    for (size_t i = 0; i < LEN; i++) data[i] = (uint8_t)(i * 31 + 7);
    struct state s = {.want = data};
    mixed_send_params p = {.reply_surbs = 4, .reveal_identity = 1, .port = PORT};
    check(mixed_sendanon(a, b_id, data, LEN, &p, s.sent_id), "sendanon", a);
    printf("sent %d bytes from A to B\n", LEN);

    for (int i = 0; i < 60 && !s.got_message; i++) mixed_recvanon(b, on_b, &s, 1000);
    if (!s.got_message) { fprintf(stderr, "B: nothing arrived in 60 s\n"); return 1; }
    printf("B received the %d bytes intact, sender verified\n", LEN);

    check(mixed_reply(b, s.handle, s.handle_len, 3, (const uint8_t *)"roger", 5, NULL), "reply", b);
    for (int i = 0; i < 60 && !(s.got_ack && s.got_reply); i++) mixed_recvanon(a, on_a, &s, 1000);
    if (!s.got_ack || !s.got_reply) {
        fprintf(stderr, "A: ack %d, reply %d after 60 s\n", s.got_ack, s.got_reply);
        return 1;
    }
    printf("A got the ACK and the reply through the SURB\n");
    check(mixed_closeanon(a), "closeanon A", NULL);
    check(mixed_closeanon(b), "closeanon B", NULL);
    free(data);
    return 0;
}
