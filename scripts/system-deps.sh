#!/usr/bin/env bash
# Install the system packages the tests need (Debian/Ubuntu, as root), or say what is missing.
set -euo pipefail

need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 && command -v scp >/dev/null 2>&1 \
  && command -v sftp >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v asciinema >/dev/null 2>&1 || need+=(asciinema)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# PostgreSQL server binaries: tests start throwaway clusters with initdb/pg_ctl
command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
  || need+=(postgresql)
# HAProxy runs deploy/haproxy.cfg in the integration tests
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
# rsyslog receives the SIEM stream in its tests (imtcp; rsyslog-gnutls for TLS)
command -v rsyslogd >/dev/null 2>&1 || [ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
compgen -G '/usr/lib/*/rsyslog/lmnsd_gtls.so' >/dev/null || need+=(rsyslog-gnutls)
# OpenLDAP: the directory-group tests start a throwaway slapd and load it with ldapadd
[ -x /usr/sbin/slapd ] || command -v slapd >/dev/null 2>&1 || need+=(slapd)
command -v ldapadd >/dev/null 2>&1 && command -v ldapmodify >/dev/null 2>&1 || need+=(ldap-utils)
# A real ICAP malware scanner for the upload-scanning tests: c-icap's virus_scan with clamd
command -v c-icap >/dev/null 2>&1 || [ -x /usr/bin/c-icap ] || need+=(c-icap)
compgen -G '/usr/lib/*/c_icap/virus_scan.so' >/dev/null || need+=(libc-icap-mod-virus-scan)
command -v clamd >/dev/null 2>&1 || [ -x /usr/sbin/clamd ] || need+=(clamav-daemon)
# Debian's Chromium, driven by Playwright in the browser tests
[ -x /usr/bin/chromium ] || need+=(chromium)
# npm installs asciinema-player (the web UI's recording player) at build time: 'make static'
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v node >/dev/null 2>&1 || need+=(nodejs)
# nginx: the reverse proxy bench/webload.py measures the broker's web proxy against
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)

[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  exit 0
fi
echo "missing system packages: ${need[*]} (install them with: sudo apt-get install ${need[*]})" >&2
exit 1
