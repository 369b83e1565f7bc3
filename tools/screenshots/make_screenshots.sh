#!/bin/sh
# make_screenshots.sh - screenshots of coin in a real terminal with inline
# images: xterm emulating a VT340 (which has sixel graphics) on a virtual X
# display (Xvfb), captured as PNG into docs/screenshots/.
#
#   tools/screenshots/make_screenshots.sh [options] [NAME=COMMAND ...]
#
# Every shot runs COMMAND in a fresh xterm, waits, optionally types keys into
# it, and saves the xterm window as OUT/NAME.png.  Without NAME=COMMAND
# arguments it makes the default shots:
#   images-sixel   tools/screenshots/showimg on demo pictures (sixel)
#   images-blocks  the same with COIN_GRAPHICS=blocks (24-bit half-blocks)
#   images-tmux    the same inside tmux with COIN_GRAPHICS=sixel (tmux's
#                  passthrough)
#   curses, curses-dialog
#                  showimg --curses: termimg.h's recipe in a curses screen,
#                  then with a dialog opened over the image (key d)
#   workbench      bin/coin with no arguments (the workbench), when the tree
#                  has it (tui/wb_*.c)
# The showimg shots also check, through the terminal's cursor position
# report, that the cursor is back at the image's top-left cell after the
# image; the script fails when it is not.
# showimg queries the terminal and renders with coin's own code
# (tui/termcaps.c, tui/termimg.c), so the first two prove sixel and
# half-blocks in a real terminal.
#
# Options:
#   --out DIR       where the PNGs go (default docs/screenshots)
#   --delay S       seconds to wait before keys and capture (default 3)
#   --keys NAME=K   xdotool key names typed into shot NAME after the delay,
#                   space separated, e.g. --keys 'workbench=Down Return'
#                   (another delay follows before the capture)
#   --geometry CxR  xterm size in cells (default 110x34)
#   --font-size N   xterm font size in points (default 11, DejaVu Sans Mono)
#   --home DIR      COIN_HOME for the shots (default: the caller's)
#
# Needs (installed with apt-get when missing, as root or through sudo):
# xvfb, xterm, imagemagick, x11-utils, xdotool, fonts-dejavu-core.
# Not part of `make test`.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

out=docs/screenshots
delay=3
geometry=110x34
font_size=11
keys_spec=""
shots=""
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out=$2; shift 2 ;;
    --delay) delay=$2; shift 2 ;;
    --keys) keys_spec="$keys_spec
$2"; shift 2 ;;
    --geometry) geometry=$2; shift 2 ;;
    --font-size) font_size=$2; shift 2 ;;
    --home) export COIN_HOME="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "make_screenshots: unknown option $1 (see --help)" >&2; exit 2 ;;
    *=*) shots="$shots
$1"; shift ;;
    *) echo "make_screenshots: a shot is NAME=COMMAND, not '$1'" >&2; exit 2 ;;
    esac
done

# ---- packages ---------------------------------------------------------------
need=""
for p in xvfb xterm imagemagick x11-utils xdotool fonts-dejavu-core; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    echo "make_screenshots: installing$need"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    $sudo apt-get install -y -qq $need >/dev/null
fi

# ---- the programs -----------------------------------------------------------
make -j2 bin/coin >/dev/null
# showimg links coin's renderer and image loader (build/libcoin.a) with the
# libraries the Makefile links bin/coin with.
blas=/usr/lib/x86_64-linux-gnu/openblas-openmp
showimg=build/showimg
cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -fopenmp -I. -o "$showimg" \
    tools/screenshots/showimg.c tui/termcaps.c tui/termimg.c build/libcoin.a \
    -L"$blas" -Wl,-rpath,"$blas" -lopenblas -lcjson -lutf8proc -lpng -lsqlite3 \
    -lncursesw -lsixel -lz -lm -fopenmp

# Demo pictures, drawn here so nothing with a licence of its own is shown:
# a landscape at dusk (smooth gradients and flat shapes) and a colour wheel.
demo=build/screenshots
mkdir -p "$demo" "$out"
[ -f "$demo/landscape.png" ] || convert -size 384x384 gradient:'#1b2a6b-#f7a440' \
    -fill '#ffe27a' -draw 'circle 270,150 270,195' \
    -fill '#3b5d2a' -draw 'path "M 0,290 Q 90,220 190,280 T 384,260 L 384,384 L 0,384 Z"' \
    -fill '#24401c' -draw 'path "M 0,340 Q 120,280 240,330 T 384,320 L 384,384 L 0,384 Z"' \
    -fill '#f2f2f2' -draw 'rectangle 80,300 120,335' \
    -fill '#a03020' -draw 'polygon 72,302 100,278 128,302' "$demo/landscape.png"
[ -f "$demo/wheel.png" ] || convert -size 384x384 xc: -colorspace HSL \
    -fx 'hypot(i-w/2,j-h/2) < w/2-4 ? (atan2(j-h/2,i-w/2)/pi/2+0.5) : 0' \
    -channel G -fx 'hypot(i-w/2,j-h/2) < w/2-4 ? 1 : 0' \
    -channel B -fx 'hypot(i-w/2,j-h/2) < w/2-4 ? 1-hypot(i-w/2,j-h/2)/w : 0.1' \
    +channel -colorspace sRGB "$demo/wheel.png"

reports=build/screenshots/reports
rm -rf "$reports"
mkdir -p "$reports"
if [ -z "$shots" ]; then
    pics="$demo/landscape.png $demo/wheel.png"
    # inside tmux 3.3 (no sixel of its own) forced sixel takes the passthrough
    tmux_cmd="tmux -L coin-shots -f /dev/null set -g allow-passthrough on;"
    tmux_cmd="$tmux_cmd COIN_GRAPHICS=sixel $showimg --wait --report $reports/images-tmux $pics"
    shots="
images-sixel=$showimg --wait --report $reports/images-sixel $pics
images-blocks=COIN_GRAPHICS=blocks COLORTERM=truecolor $showimg --wait --report $reports/images-blocks $pics
images-tmux=tmux -L coin-shots -f /dev/null new-session '$tmux_cmd'
curses=$showimg --curses $demo/landscape.png
curses-dialog=$showimg --curses $demo/landscape.png"
    keys_spec="$keys_spec
curses-dialog=d"
    if ls tui/wb_*.c >/dev/null 2>&1; then
        shots="$shots
workbench=bin/coin"
    else
        echo "make_screenshots: no workbench in this tree (tui/wb_*.c); skipping that shot"
    fi
fi

# ---- the display ------------------------------------------------------------
display=:$((90 + $$ % 9))
Xvfb "$display" -screen 0 1600x1000x24 -nolisten tcp >/dev/null 2>&1 &
xvfb=$!
cleanup() { kill "$xvfb" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
export DISPLAY="$display"
i=0
until xwininfo -root >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 50 ] || { echo "make_screenshots: Xvfb did not start on $display" >&2; exit 1; }
    sleep 0.1
done

printf '%s\n' "$shots" | while IFS= read -r shot; do
    [ -n "$shot" ] || continue
    name=${shot%%=*}
    cmd=${shot#*=}
    title="coin-shot-$name"
    # VT340 with 256 colour registers: sixel in DA1 (attribute 4); window
    # ops allowed so the cell size can be asked (CSI 16 t).
    xterm -ti vt340 -title "$title" -geometry "$geometry+0+0" \
        -fa "DejaVu Sans Mono" -fs "$font_size" -bg black -fg grey90 \
        -xrm 'XTerm*decTerminalID: vt340' -xrm 'XTerm*numColorRegisters: 256' \
        -xrm 'XTerm*allowWindowOps: true' -xrm 'XTerm*sixelScrolling: true' \
        -e sh -c "TERM=xterm-256color; export TERM; $cmd; sleep 30" &
    term=$!
    sleep "$delay"
    keys=$(printf '%s\n' "$keys_spec" | sed -n "s/^$name=//p" | tail -1)
    win=$(xdotool search --name "$title" 2>/dev/null | head -1 || true)
    if [ -n "$keys" ] && [ -n "$win" ]; then
        # XTEST keys to the focused window: xterm ignores sent events
        xdotool windowfocus "$win" 2>/dev/null || true
        sleep 0.3
        # shellcheck disable=SC2086
        xdotool key --delay 150 $keys
        sleep "$delay"
    fi
    if [ -n "$win" ]; then
        import -window "$win" "$out/$name.png"
    else
        import -window root "$out/$name.png"
    fi
    kill "$term" 2>/dev/null || true
    wait "$term" 2>/dev/null || true
    echo "make_screenshots: $out/$name.png"
    [ ! -f "$reports/$name" ] || sed 's/^/    /' "$reports/$name"
done
tmux -L coin-shots kill-server 2>/dev/null || true
# a wrong cursor after an image means termimg's promise is broken here
! grep -q WRONG "$reports"/* 2>/dev/null || { echo "make_screenshots: see WRONG above" >&2; exit 1; }
