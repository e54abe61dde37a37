/* Health (m3.proto): serving, or draining. */
#include "call.h"
#include "m3_handlers.h"

void method_health(call *cl, const uint8_t *att, size_t att_len) {
  (void)att;
  (void)att_len;
  server *s = cl->c->s;
  M3__HealthResponse out = M3__HEALTH_RESPONSE__INIT;
  out.serving = !s->draining;
  out.detail = s->draining ? "draining" : "serving";
  call_reply(cl, &out.base);
}
