#!/bin/sh
# Runs inside the guest (one-context INIT_SCRIPTS); the context CD is the current directory.
. ./context.sh
echo "hello from VM $VMID ($SET_HOSTNAME) at $ETH0_IP" > /run/imagekit-demo
