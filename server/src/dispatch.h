/* Frames from a connection to the calls and their methods (dispatch.c). */
#ifndef M3_SERVER_DISPATCH_H
#define M3_SERVER_DISPATCH_H

#include <stdint.h>

#include "server.h"

/* conn_hooks.frame: a whole frame from c (see conn.h). */
void dispatch_frame(conn *c, const m3_frame *f, const uint8_t *msg, const uint8_t *att);
/* conn_hooks.refuse_early: a REQUEST after Hello whose message is over its
 * method's cap is refused (RESOURCE_EXHAUSTED) from its header alone. */
int dispatch_refuse_early(conn *c, const m3_frame *f);

#endif /* M3_SERVER_DISPATCH_H */
