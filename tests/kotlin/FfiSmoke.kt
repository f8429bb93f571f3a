// A phone app's use of the Kotlin bindings (cosigner-ffi), run on the JVM by
// tests/tests/ffi_bindings.rs against a deployment like `make up`'s.
//
// The device key is made the way an Android app makes it, minus the hardware: java.security's
// EC P-256, signing a digest with NONEwithECDSA (Android Keystore's name for it too). The sealer
// is javax.crypto's AES/GCM with the record's name as associated data; the store is a map.
// Prints one JSON line: the wallet, its key, a message and the signature (the test verifies it).

import java.security.KeyPairGenerator
import java.security.SecureRandom
import java.security.Signature
import java.security.interfaces.ECPublicKey
import java.security.spec.ECGenParameterSpec
import javax.crypto.Cipher
import javax.crypto.KeyGenerator
import javax.crypto.SecretKey
import javax.crypto.spec.GCMParameterSpec
import uniffi.cosigner_ffi.*

class JvmDeviceKey : DeviceKeyStore {
    private val pair = KeyPairGenerator.getInstance("EC").apply {
        initialize(ECGenParameterSpec("secp256r1"))
    }.generateKeyPair()

    override fun publicKey(): ByteArray {
        val w = (pair.public as ECPublicKey).w
        fun fixed(n: java.math.BigInteger): ByteArray {
            val b = n.toByteArray().dropWhile { it == 0.toByte() }.toByteArray()
            return ByteArray(32 - b.size) + b
        }
        return byteArrayOf(4) + fixed(w.affineX) + fixed(w.affineY)
    }

    override fun signDigest(digest: ByteArray): ByteArray =
        Signature.getInstance("NONEwithECDSA").run {
            initSign(pair.private)
            update(digest)
            sign()
        }
}

class MapRecords : RecordStore {
    private val records = java.util.concurrent.ConcurrentHashMap<String, ByteArray>()
    override fun read(name: String): ByteArray? = records[name]
    override fun write(name: String, bytes: ByteArray) { records[name] = bytes }
    override fun remove(name: String) { records.remove(name) }
    override fun list(): List<String> = records.keys.sorted()
}

class GcmSealer : RecordSealer {
    private val key: SecretKey = KeyGenerator.getInstance("AES").apply { init(256) }.generateKey()

    override fun seal(name: String, plaintext: ByteArray): ByteArray {
        val nonce = ByteArray(12).also { SecureRandom().nextBytes(it) }
        val c = Cipher.getInstance("AES/GCM/NoPadding")
        c.init(Cipher.ENCRYPT_MODE, key, GCMParameterSpec(128, nonce))
        c.updateAAD(name.toByteArray())
        return nonce + c.doFinal(plaintext)
    }

    override fun open(name: String, sealed: ByteArray): ByteArray {
        try {
            val c = Cipher.getInstance("AES/GCM/NoPadding")
            c.init(Cipher.DECRYPT_MODE, key, GCMParameterSpec(128, sealed.copyOfRange(0, 12)))
            c.updateAAD(name.toByteArray())
            return c.doFinal(sealed.copyOfRange(12, sealed.size))
        } catch (e: javax.crypto.AEADBadTagException) {
            throw CosignerException.ShareDamaged("$name: does not open")
        }
    }
}

fun hex(b: ByteArray) = b.joinToString("") { "%02x".format(it) }

fun main() {
    val env = System.getenv()
    val records = MapRecords()
    val client = Cosigner(
        env.getValue("COSIGNER_TRUST"), env.getValue("COSIGNER_PROVIDER"),
        env.getValue("COSIGNER_RECOVERY"), records, GcmSealer(), JvmDeviceKey(),
    )
    val created = client.createWallet("regtest")
    val message = ByteArray(32).also { SecureRandom().nextBytes(it) }
    val signed = client.signMessage(created.wallet.walletId, message)
    try {
        client.signMessage("not hex", message)
        error("a malformed wallet id was accepted")
    } catch (e: CosignerException.Input) {
    }
    val refreshed = client.refresh(created.wallet.walletId)
    check(refreshed.address == created.wallet.address)
    println(
        """{"wallet_id":"${created.wallet.walletId}","key":"${created.wallet.groupPublicKey}",""" +
            """"message":"${hex(message)}","signature":"${hex(signed.signature)}",""" +
            """"epoch":${refreshed.epoch},"records":${records.list().size}}""",
    )
}
