"""The topology on Docker Swarm: the article's `deploy:` block on a real orchestrator.

So far: the stack file (stack.swarm.stackfile, kept as stack/swarm-stack.yml) that a
learner deploys by hand with `docker stack deploy`. The live backend that executes
stack.plan on a swarm (`--backend swarm`) is not written yet.
"""
