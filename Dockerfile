# The controller image, for those who build with Docker/BuildKit. `cargo xtask image` builds the
# same image (a static binary, user 65532, entrypoint /usr/local/bin/higress-canary) as an OCI
# image layout without Docker; that one is what CI checks.
#
#   docker build -t registry.example.com/higress-canary/controller:0.1.0 .
#
# The plugin image is not built here: `cargo xtask wasm` writes its OCI layout to dist/oci.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# rust-toolchain.toml also asks for the wasm targets; the controller does not need them.
RUN rm rust-toolchain.toml \
 && target="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p higress-canary --bin higress-canary --target "$target" \
 && cp "target/$target/release/higress-canary" /higress-canary

# distroless/static: CA certificates, /etc/passwd with nonroot (65532), nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /higress-canary /usr/local/bin/higress-canary
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/higress-canary"]
CMD ["run"]
