"""`make image-check`: the image's filesystem built from the Dockerfile without a Docker engine
(debootstrap + each step in a chroot), then wakeful run in it the way a platform runs it."""
