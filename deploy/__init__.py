"""Deployment: the integer network (IR), its numpy reference executor and its C99 export."""
