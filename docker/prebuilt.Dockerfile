# The runtime image with a binary built outside Docker (`cargo build --release --locked`),
# for machines whose builds cannot fetch a Rust toolchain (scripts/compose-test).
#   docker build --target runtime -t pimage-runtime .
#   docker build -f docker/prebuilt.Dockerfile --build-arg RUNTIME=pimage-runtime -t pimage DIR
# DIR holds only the binary, named pimage.
ARG RUNTIME=pimage-runtime
FROM ${RUNTIME}
COPY pimage /usr/local/bin/pimage
