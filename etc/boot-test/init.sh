#!/bin/sh
# Runs in the guest as an INIT_SCRIPT (cwd: the context CD). The boot test looks for the
# marker on the console and for the file it leaves behind.
. ./context.sh
echo "imagekit boot test: $SET_HOSTNAME $ETH0_IP" > /run/imagekit-boot-test
echo "IMAGEKIT-BOOT-TEST-MARKER $SET_HOSTNAME $ETH0_IP" > /dev/ttyS0 2>/dev/null || true
