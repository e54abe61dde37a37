/* Frames from a connection to the calls and their methods (dispatch.c). */
#ifndef M3_SERVER_DISPATCH_H
#define M3_SERVER_DISPATCH_H

#include <stdint.h>

#include "server.h"

/* conn_hooks.frame: a whole frame from c (see conn.h). */
void dispatch_frame(conn *c, const m3_frame *f, const uint8_t *msg, const uint8_t *att);

#endif /* M3_SERVER_DISPATCH_H */
