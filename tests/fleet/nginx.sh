# shellcheck shell=bash
# The fleet benchmark's HTTP mirror as users run one: nginx serving the bare repos' files
# statically (its default strong-enough ETag from mtime and size, and 304 to If-None-Match or
# If-Modified-Since) and smart HTTP through `git http-backend` behind fcgiwrap. Sourced by run.sh.
#
#   start_nginx DIR ROOT PORT [CERT KEY CA]
#
# Starts a private fcgiwrap and a private nginx (own config, pid file, logs and temp dirs under
# DIR; no system service) serving the repos under ROOT on 127.0.0.1:PORT, over HTTPS with the
# certificate CERT and its key KEY (PEM files, signed by the CA in CA) when they are given, and
# waits until it answers, both in the mirror's cgroup (run.sh's `in_cgroup`: fcgiwrap ignores SIGCHLD, so the
# kernel reaps its http-backends and their CPU is in no parent's cutime, only in the cgroup's).
# Sets SERVERS to their pids and defines `polls`, which prints the polls and the smart fetches
# served so far, counted from nginx's access log.
#   test_ca DIR
#
# Makes a CA for one run and a certificate for 127.0.0.1 signed by it (ECDSA P-256, two days) in
# DIR: ca.pem, server.pem, server.key.
test_ca() {
    local d=$1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=troops test CA" \
        -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' >"$d/san.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
        -extfile "$d/san.ext" -out "$d/server.pem" 2>/dev/null
}

start_nginx() {
    local dir=$1 root=$2 port=$3 cert=${4:-} key=${5:-} ca=${6:-} user="" tls="" scheme=http
    if [ -n "$cert" ]; then
        # TLS 1.3 as well: nginx before 1.23.4 (bookworm has 1.22) leaves it out unless told.
        tls="ssl_certificate $cert; ssl_certificate_key $key; ssl_protocols TLSv1.2 TLSv1.3;"
        scheme=https
    fi
    mkdir -p "$dir/tmp"
    # As root, nginx's workers would switch to `nobody`, who cannot read a mktemp dir.
    [ "$(id -u)" = 0 ] && user="user root;"
    # fcgiwrap's own socket (-s) has a backlog of 5: a thousand nodes fetching at once got 502s.
    # Given a listening socket as stdin (as spawn-fcgi does), it uses that one.
    in_cgroup python3 -c 'import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(4096)
os.dup2(s.fileno(), 0)
os.execv("/usr/sbin/fcgiwrap", ["fcgiwrap", "-c", "4"])' "$dir/fcgiwrap.sock" &
    SERVERS=("$!")
    until [ -S "$dir/fcgiwrap.sock" ]; do sleep 0.1; done
    cat >"$dir/nginx.conf" <<CONF
$user
daemon off;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    log_format polls '\$request_method \$uri \$args \$status';
    access_log $dir/access.log polls;
    default_type application/octet-stream;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$port ${tls:+ssl} backlog=4096;
        $tls
        root $root;
        fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
        fastcgi_param GIT_PROJECT_ROOT $root;
        fastcgi_param GIT_HTTP_EXPORT_ALL 1;
        fastcgi_param GIT_CONFIG_NOSYSTEM 1;
        fastcgi_param GIT_CONFIG_GLOBAL /dev/null;
        fastcgi_param PATH_INFO \$uri;
        fastcgi_param QUERY_STRING \$args;
        fastcgi_param REQUEST_METHOD \$request_method;
        fastcgi_param CONTENT_TYPE \$content_type;
        fastcgi_param CONTENT_LENGTH \$content_length;
        fastcgi_param REMOTE_ADDR \$remote_addr;
        fastcgi_param GIT_PROTOCOL \$http_git_protocol if_not_empty;
        # A path with a query (\`info/refs?service=\`) and the POSTs are smart HTTP; the rest, files.
        location / {
            if (\$args) { fastcgi_pass unix:$dir/fcgiwrap.sock; }
        }
        location ~ /git-upload-pack\$ { fastcgi_pass unix:$dir/fcgiwrap.sock; }
    }
}
CONF
    in_cgroup /usr/sbin/nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
    SERVERS+=("$!")
    until curl -sf ${ca:+--cacert "$ca"} "$scheme://127.0.0.1:$port/deploy.git/HEAD" >/dev/null; do sleep 0.1; done
    NGINX_LOG=$dir/access.log
    # Polls: probes, GETs of info/refs with no query (each poll of a node opens with one); fetches:
    # smart GETs of it.
    polls() { awk '$1 == "GET" && $2 ~ /\/info\/refs$/ { if ($3 == "-") p++; else f++ } END { print p + 0, f + 0 }' "$NGINX_LOG"; }
}
