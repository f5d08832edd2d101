# Sourced by bench/msrp/run.sh and bench/msrp/cpu-split.sh: the rtedge setup
# both measure (one worker, digest AUTH against a users file, no management
# service, unpinned worker: the scripts pin the process with taskset).
#
#     write_rtedge_config DIR USER PASSWORD MSRP_PORT [WS_PORT]
#
# writes DIR/users.toml and DIR/rtedge.toml: an `msrp` listener on
# 127.0.0.1:MSRP_PORT and, with WS_PORT, a `ws` listener serving the `msrp`
# sub-protocol.
write_rtedge_config() {
  local dir=$1 user=$2 pass=$3 msrp_port=$4 ws_port=${5:-}
  printf '[[user]]\nname = "%s"\npassword = "%s"\n' "$user" "$pass" >"$dir/users.toml"
  {
    printf 'workers = 1\n\n[[listen]]\ntransport = "msrp"\naddress = "127.0.0.1:%s"\n\n' "$msrp_port"
    if [ -n "$ws_port" ]; then
      printf '[[listen]]\ntransport = "ws"\naddress = "127.0.0.1:%s"\n\n' "$ws_port"
      printf '[websocket]\nsub_protocols = ["msrp"]\n\n'
    fi
    printf '[auth]\nrealm = "rtedge.bench"\nusers_file = "%s/users.toml"\n\n' "$dir"
    printf '[reactor]\npin_workers = false\n\n[mgmt]\nenabled = false\n\n'
    printf '[region]\npath = "%s/rtedge.region"\n\n[log]\nlevel = "warn"\n' "$dir"
  } >"$dir/rtedge.toml"
}
