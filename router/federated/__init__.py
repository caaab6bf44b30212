"""Federated router training on Flower: the ClientApp, the ServerApp, and the Simulation Engine runner.

Needs the router-training environment (``make router-env``): Flower is not part of the gateway's.
"""
