"""The sealer side: the C2 processor venus-worker / damocles-worker starts, which proves
through the broker."""
