"""`pgwarden demo`: the whole story on one machine with nothing but the virtualenv."""
