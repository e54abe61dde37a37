# Generates the RPC method table (m3_methods.h / m3_methods.c) from the
# service in m3.proto, so that a method exists everywhere once it is declared
# there, and the server's handler table beside it (m3_handlers.h /
# m3_handlers.c: one method_<name> per rpc, which server/src/method_<name>.c
# must define, or m3-server does not link).
# Usage: awk -v out=h|c|handlers_h|handlers_c -f gen_methods.awk m3.proto
function snake(s,    r, i, c) {
  r = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (c ~ /[A-Z]/) {
      if (i > 1) r = r "_"
      r = r tolower(c)
    } else {
      r = r c
    }
  }
  return r
}
/^[ \t]*rpc[ \t]/ {
  line = $0
  admin = (line ~ /\/\/[ \t]*admin/) ? 1 : 0
  sub(/\/\/.*/, "", line)
  gsub(/[();]/, " ", line)
  n = split(line, w, /[ \t]+/)
  # w: "" rpc Name Req returns [stream] Resp
  k = 0
  for (i = 1; i <= n; i++) if (w[i] != "") t[++k] = w[i]
  name[++m] = t[2]
  req[m] = t[3]
  stream[m] = (t[5] == "stream") ? 1 : 0
  resp[m] = stream[m] ? t[6] : t[5]
  adm[m] = admin
}
END {
  if (out == "h") {
    print "/* Generated from proto/m3.proto by proto/gen_methods.awk. Do not edit. */"
    print "#ifndef M3_METHODS_H"
    print "#define M3_METHODS_H"
    print ""
    print "#include \"m3.pb-c.h\""
    print ""
    print "typedef enum m3_method {"
    print "  M3_METHOD_NONE = 0,"
    for (i = 1; i <= m; i++) printf "  M3_METHOD_%s = %d,\n", toupper(snake(name[i])), i
    printf "  M3_METHOD_COUNT = %d\n", m + 1
    print "} m3_method;"
    print ""
    print "typedef struct m3_method_info {"
    print "  const char *name;         /* \"Retrieve\" */"
    print "  int server_streaming;     /* responses are a stream of messages */"
    print "  int admin;                /* needs the admin token */"
    print "  const ProtobufCMessageDescriptor *request;"
    print "  const ProtobufCMessageDescriptor *response;"
    print "} m3_method_info;"
    print ""
    print "/* Indexed by m3_method; entry 0 is empty. */"
    print "extern const m3_method_info m3_methods[M3_METHOD_COUNT];"
    print ""
    print "#endif"
  } else if (out == "handlers_h") {
    print "/* Generated from proto/m3.proto by proto/gen_methods.awk. Do not edit. */"
    print "#ifndef M3_HANDLERS_H"
    print "#define M3_HANDLERS_H"
    print ""
    print "#include <stddef.h>"
    print "#include <stdint.h>"
    print ""
    print "#include \"m3_methods.h\""
    print ""
    print "typedef struct call call;"
    print ""
    print "/* A method's handler, on the loop thread: cl has started (call.h) and"
    print " * cl->req is its request; att (att_len bytes, Put's records) is valid"
    print " * during the call only. It ends the call or hands it on (threadpool,"
    print " * read pump). One per rpc, in server/src/method_<name>.c. */"
    print "typedef void method_handler(call *cl, const uint8_t *att, size_t att_len);"
    print ""
    for (i = 1; i <= m; i++) printf "method_handler method_%s;\n", snake(name[i])
    print ""
    print "/* Indexed by m3_method; entry 0 is NULL. */"
    print "extern method_handler *const method_handlers[M3_METHOD_COUNT];"
    print ""
    print "#endif"
  } else if (out == "handlers_c") {
    print "/* Generated from proto/m3.proto by proto/gen_methods.awk. Do not edit. */"
    print "#include \"m3_handlers.h\""
    print ""
    print "method_handler *const method_handlers[M3_METHOD_COUNT] = {"
    print "  0,"
    for (i = 1; i <= m; i++) printf "  method_%s,\n", snake(name[i])
    print "};"
  } else {
    print "/* Generated from proto/m3.proto by proto/gen_methods.awk. Do not edit. */"
    print "#include \"m3_methods.h\""
    print ""
    print "const m3_method_info m3_methods[M3_METHOD_COUNT] = {"
    print "  {0, 0, 0, 0, 0},"
    for (i = 1; i <= m; i++)
      printf "  {\"%s\", %d, %d, &m3__%s__descriptor, &m3__%s__descriptor},\n", name[i], stream[i], adm[i], snake(req[i]), snake(resp[i])
    print "};"
  }
}
