# Generates the RPC method table (m3_methods.h / m3_methods.c) from the
# service in m3.proto, so that a method exists everywhere once it is declared
# there. Usage: awk -v out=h|c -f gen_methods.awk m3.proto
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
