fn main() { vidgate::placeholder(); }
