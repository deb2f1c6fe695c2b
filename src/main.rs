fn main() {
    println!("kvlab: under construction");
}
