"""Self-signed test certificates for the interop peers."""
import datetime
import ipaddress
import os


def make_cert(d, tag="cert", extra_names=0):
    """Writes TAG.pem and TAG-key.pem (ECDSA P-256, self-signed) into `d`, valid for localhost,
    127.0.0.1, 127.0.0.2 and ::1; `extra_names` more DNS names make the certificate large (the
    amplification-limit case needs a server flight well beyond three client Initials).
    Returns (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = [x509.DNSName("localhost")] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "127.0.0.2", "::1")
    ] + [x509.DNSName(f"name-{i}.padding.example") for i in range(extra_names)]
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(d, f"{tag}.pem"), os.path.join(d, f"{tag}-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path
