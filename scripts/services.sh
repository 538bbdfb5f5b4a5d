#!/usr/bin/env bash
# Make sure what the tests talk to is running: PostgreSQL, Redis, and Chromium for
# the browser tests. Starts what is down; installs Chromium from Debian if missing.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

if ! pg_up; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 30); do pg_up && break; sleep 1; done
fi
if ! redis_up; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 30); do redis_up && break; sleep 1; done
fi
pg_up || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
redis_up || { echo "Redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }

if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium for the browser tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

# A real IMAP server for the bounce mailbox poller's tests: Debian's dovecot-imapd,
# run as its own instance from its own configuration (the system's /etc/dovecot is
# left as it is). It listens on loopback only: IMAP on 127.0.0.1:143 and IMAPS on
# 127.0.0.1:993 with a self-signed certificate for 127.0.0.1/localhost (tests trust
# that certificate file). One test-only login, newsletter / newsletter-test, with
# maildirs under /var/lib/newsletter-imap; each test run works in its own folders.
IMAP_DIR=/etc/dovecot/newsletter-tests
imap_up() { (exec 3<>/dev/tcp/127.0.0.1/143) >/dev/null 2>&1; }
if ! command -v dovecot >/dev/null || [ ! -e /usr/lib/dovecot/imap ]; then
  echo "installing Debian's dovecot-imapd for the mailbox tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq dovecot-imapd >/dev/null
fi
mkdir -p "$IMAP_DIR" /var/lib/newsletter-imap
chown dovecot:dovecot /var/lib/newsletter-imap
if [ ! -f "$IMAP_DIR/cert.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=localhost" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$IMAP_DIR/key.pem" -out "$IMAP_DIR/cert.pem" 2>/dev/null
  chmod 600 "$IMAP_DIR/key.pem"
  chmod 644 "$IMAP_DIR/cert.pem"
  echo "newsletter:{PLAIN}newsletter-test" >"$IMAP_DIR/passwd"
fi
# Written every run; a running server restarts when it changed.
cat >"$IMAP_DIR/dovecot.conf.new" <<CONF
# Test-only IMAP server (scripts/services.sh): loopback, one plain-password login.
base_dir = /run/dovecot-newsletter-tests
instance_name = dovecot-newsletter-tests
protocols = imap
listen = 127.0.0.1
log_path = /var/log/dovecot-newsletter-tests.log
ssl = yes
ssl_cert = <$IMAP_DIR/cert.pem
ssl_key = <$IMAP_DIR/key.pem
disable_plaintext_auth = no
# The wrong-password tests need no 2 s delay, nor the growing per-IP penalty.
auth_failure_delay = 0
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
auth_mechanisms = plain login
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $IMAP_DIR/passwd
}
userdb {
  driver = static
  args = uid=dovecot gid=dovecot home=/var/lib/newsletter-imap/%u
}
first_valid_uid = $(id -u dovecot)
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    port = 143
  }
  inet_listener imaps {
    port = 993
    ssl = yes
  }
}
CONF
if cmp -s "$IMAP_DIR/dovecot.conf.new" "$IMAP_DIR/dovecot.conf"; then
  rm "$IMAP_DIR/dovecot.conf.new"
else
  mv "$IMAP_DIR/dovecot.conf.new" "$IMAP_DIR/dovecot.conf"
  if imap_up; then
    dovecot -c "$IMAP_DIR/dovecot.conf" stop
    for _ in $(seq 30); do imap_up || break; sleep 1; done
  fi
fi
if ! imap_up; then
  echo "starting dovecot (IMAP for the mailbox tests)"
  dovecot -c "$IMAP_DIR/dovecot.conf"
  for _ in $(seq 30); do imap_up && break; sleep 1; done
fi
imap_up || { echo "IMAP is not reachable on 127.0.0.1:143" >&2; exit 1; }
